"""A model's int8 encoder: quantised from its fp32 graph on calibration photos, checked on others.

``make_int8`` quantises (``quantize.quantize_graph``), captions the check photos from both graphs
(``agreement.measure``) and records the verdict in the int8 graph's metadata, so that whoever loads it
knows whether it passed without checking again. ``export_int8_to_repo`` writes it into a model
repository beside the fp32 export, with its section in the model card (``python -m captioner
export-onnx DIR --int8``); the onnx backend makes one in its cache the same way
(``onnx_runtime.OnnxBackend``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from captioner.core.backends import quantize
from captioner.core.backends.agreement import Agreement, card_section, measure, with_card_section
from captioner.core.backends.calibration import MIN_CALIBRATION, CalibrationError, PhotoSets, pixels_of
from captioner.core.backends.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    SHIPPED_EXPORT,
    SHIPPED_INT8,
    repo_graphs,
    with_metadata,
    write_export,
)
from captioner.core.backends.sessions import open_session
from captioner.core.images.preprocess import preprocessor_for

Progress = Callable[[str], None]


def int8_metadata(base: dict[str, str], agreement: Agreement, calibrated: int) -> dict[str, str]:
    """The int8 graph's metadata: ``base`` (weights, backbone, output), its precision, how it was
    calibrated, and its check (``Agreement.to_metadata``)."""
    return {**base, "precision": "int8", "calibration_method": quantize.METHOD,
            "calibration_photos": str(calibrated), **agreement.to_metadata()}


def calibration_summary(metadata: dict[str, str]) -> str:
    """How a graph was calibrated, in words, from its metadata."""
    return f"{metadata.get('calibration_photos', 'an unknown number of')} real photos " \
           f"({metadata.get('calibration_method', 'unknown')} ranges)"


def make_int8(loaded: Any, fp32: bytes, photos: PhotoSets, metadata: dict[str, str],
              progress: Progress | None = None) -> tuple[bytes, Agreement, dict[str, str]]:
    """(the int8 graph of the fp32 backbone graph ``fp32``, its agreement, its metadata): calibrated on
    ``photos.calibration``, checked on ``photos.check``; its metadata is ``metadata`` with the
    calibration and the check added (``int8_metadata``). Raises ``CalibrationError`` when too few calibration photos
    can be read."""
    say = progress or (lambda _: None)
    preprocess = preprocessor_for(loaded.config)
    calibration = pixels_of(photos.calibration, preprocess)
    calibrated = sum(len(batch) for batch in calibration)
    if calibrated < MIN_CALIBRATION:
        raise CalibrationError(f"{calibrated} readable calibration photos in {photos.source}: an int8 encoder "
                               f"needs at least {MIN_CALIBRATION}")
    say(f"calibrating the int8 encoder on {calibrated} photos")
    int8 = quantize.quantize_graph(fp32, calibration)
    check = pixels_of(photos.check, preprocess)
    say(f"checking its captions on {sum(len(batch) for batch in check)} other photos")
    agreement = measure(loaded.model, loaded.vocab, _runner(fp32), _runner(int8), check)
    metadata = int8_metadata(metadata, agreement, calibrated)
    return with_metadata(int8, metadata), agreement, metadata


def _runner(graph: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    session = open_session(graph)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        (features,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixels.to(torch.float32).contiguous().numpy()})
        return torch.from_numpy(features)
    return run


def export_int8_to_repo(model_dir: str | os.PathLike, photos: PhotoSets,
                        progress: Progress | None = None) -> tuple[list[Path], Agreement]:
    """Write the model's fp32 export (``onnx_export.export_to_repo``) and its int8 encoder
    (``onnx/encoder_model_int8.onnx``), with the check's figures in the graph's metadata and in the
    model card (``README.md``), all whole or not at all. Returns (the paths written, the agreement);
    the graph is written whatever the verdict, which the backend reads from it."""
    model_dir = Path(model_dir)
    loaded, metadata, files = repo_graphs(model_dir)
    int8, agreement, recorded = make_int8(loaded, files[model_dir / SHIPPED_EXPORT], photos, metadata, progress)
    files[model_dir / SHIPPED_INT8] = int8
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    files[card] = with_card_section(text, card_section(agreement, calibration_summary(recorded))).encode("utf-8")
    return write_export(model_dir, files), agreement
