"""Helpers shared by the app tests (gradio_client and browser): a small model worth showing,
and running the real app on a free port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from captioner.web import app
from captioner.web.server import Server
from tests.helpers.models import make_tiny_model

APP_MODEL_TEMPERATURE = 0.5


def make_app_model(directory: Path) -> Path:
    """A tiny random decoder on real EfficientNet-Lite0 ImageNet weights whose encoder emits class
    log-probabilities: captions differ between photos, the top-classes panel shows real classes, and
    ``<end>`` is made unlikely so captions are never empty; its confidence has a temperature, as
    ``train`` writes one. Reused when ``directory`` already holds it."""
    from captioner.core.model.encoders import load_pretrained_weights
    from captioner.core.repository.storage import save_model

    if (directory / "config.json").is_file():
        return directory
    model, vocab = make_tiny_model(encoder_output="class_log_probs", end_bias=-1.0)
    load_pretrained_weights(model.encoder.backbone, "efficientnet-lite0")
    model.config.extra["confidence"] = {"rule": "temperature", "temperature": APP_MODEL_TEMPERATURE}  # as train fits
    return save_model(model, vocab, directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(built: app.CaptionApp) -> Iterator[str]:
    """Serve an app (``app.build_app``) the way ``python app.py`` does (``web.server``), on 127.0.0.1
    and a free port, from a thread; yields its URL, and closes the app's state afterwards."""
    server = Server(built.demo, app.launch_options(), host="127.0.0.1", port=free_port())
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        built.state.close()
