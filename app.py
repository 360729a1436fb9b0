"""The captioner web demo, as ``make demo`` and a Hugging Face Space run it:

    python app.py [--model DIR | owner/name[@revision]] [--backend auto|torch|onnx] [--fallback-to-bundled]

The command is ``captioner.web.main``, the app ``captioner.web.app``; ``demo`` (what ``gradio app.py``
looks for) is built on first use.
"""

import importlib

from captioner.web.main import main


def __getattr__(name: str):
    return getattr(importlib.import_module("captioner.web.app"), name)


if __name__ == "__main__":
    main()
