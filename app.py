"""The captioner web demo, as ``make demo`` and a Hugging Face Space run it:

    python app.py [--model DIR | owner/name[@revision]] [--backend auto|torch|onnx]

The app is ``captioner.web.app``; ``demo`` (what ``gradio app.py`` looks for) is built on first use.
"""

from captioner.web import app as _web_app
from captioner.web.app import main


def __getattr__(name: str):
    return getattr(_web_app, name)


if __name__ == "__main__":
    main()
