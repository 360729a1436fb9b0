"""A model folder whose int8 encoder passed its check, for tests of where the precision goes."""

from __future__ import annotations

from pathlib import Path

from captioner.core.backends.agreement import measure
from captioner.core.backends.calibration import pixels_of, split_photos
from captioner.core.backends.int8 import _runner, int8_metadata
from captioner.core.backends.onnx_export import (
    SHIPPED_EXPORT,
    SHIPPED_INT8,
    export_to_repo,
    shipped_metadata,
    weights_digest,
    with_metadata,
)
from captioner.core.images.preprocess import preprocessor_for
from captioner.core.repository.storage import load_model


def passing_int8_graph(model_dir: Path, photos: Path) -> bytes:
    """The model's fp32 encoder graph (``export-onnx`` first), labelled as its int8 encoder with the
    agreement the check measures for it on half of ``photos``: every caption identical, so it passed.
    A stand-in for a well-quantised graph: what runs it is under test, not the quantisation."""
    if not (model_dir / SHIPPED_EXPORT).is_file():
        export_to_repo(model_dir)
    loaded = load_model(model_dir, "cpu")
    fp32 = (model_dir / SHIPPED_EXPORT).read_bytes()
    _, check = split_photos(sorted(photos.iterdir()))
    agreement = measure(loaded.model, loaded.vocab, _runner(fp32), _runner(fp32),
                        pixels_of(check, preprocessor_for(loaded.config)))
    assert agreement.passed
    base = shipped_metadata(weights_digest(model_dir, loaded.config), loaded.config)
    return with_metadata(fp32, int8_metadata(base, agreement, 30))


def ship_passing_int8(model_dir: Path, photos: Path) -> Path:
    """Write ``passing_int8_graph`` as the model's ``onnx/encoder_model_int8.onnx``; returns its path."""
    graph = passing_int8_graph(model_dir, photos)
    (model_dir / SHIPPED_INT8).write_bytes(graph)
    return model_dir / SHIPPED_INT8
