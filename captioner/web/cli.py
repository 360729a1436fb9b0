"""``python app.py``'s command line: its arguments and their checks, in a module that imports neither
Gradio nor the model stack, so that ``--help`` and a mistyped option answer at once (``web.main``
reads them before it imports the rest).

    python app.py [--model DIR | owner/name[@revision]] [--backend auto|torch|onnx]
                  [--precision auto|fp32|int8] [--max-batch-size N] [--fallback-to-bundled]

``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address (default 127.0.0.1 and the first
free port from 7860; the server is ``web/server.py``);
``CAPTIONER_MODEL`` chooses the model when ``--model`` is not given (default: the bundled one);
``CAPTIONER_MAX_BATCH`` the images per shared forward pass when ``--max-batch-size`` is not (default 8).
A model that cannot be loaded stops the app with a message, unless ``--fallback-to-bundled`` (or
``CAPTIONER_FALLBACK_TO_BUNDLED=1``) asks for the bundled model instead.
"""

from __future__ import annotations

import argparse
import os

from captioner.core.options import BACKEND_HELP, BACKENDS, PRECISION_HELP, PRECISIONS, count_setting

MAX_BATCH_SIZE = 8  # images per shared forward pass (API / caption tab) and per batch-tab pass


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="Run the captioner web demo.")
    parser.add_argument("--model", help="model directory or Hub id owner/name[@revision] "
                                        "(default: $CAPTIONER_MODEL, else the bundled model)")
    parser.add_argument("--max-batch-size", type=int, metavar="N",
                        help="concurrent requests' images per shared forward pass; 1 turns batching off "
                             f"(default: $CAPTIONER_MAX_BATCH, else {MAX_BATCH_SIZE})")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    parser.add_argument("--fallback-to-bundled", action="store_true",
                        default=os.environ.get("CAPTIONER_FALLBACK_TO_BUNDLED", "").strip() == "1",
                        help="when the model asked for cannot be loaded, serve the bundled model and say so "
                             "on the page (default: stop with a message; $CAPTIONER_FALLBACK_TO_BUNDLED=1 "
                             "is the same)")
    return parser


def max_batch_size(value: int | str | None = None) -> int:
    """``value``, else ``$CAPTIONER_MAX_BATCH``, else ``MAX_BATCH_SIZE``, checked (1 turns batching off)."""
    raw = value if value not in (None, "") else os.environ.get("CAPTIONER_MAX_BATCH") or MAX_BATCH_SIZE
    return count_setting("The maximum batch size", raw)
