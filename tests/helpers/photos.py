"""Folders of photos for the int8 encoder's calibration and check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.paths import ROOT


def write_real_photos(folder: Path) -> Path:
    """The shipped examples, scikit-image's and matplotlib's photos, and generated variations of each
    (crops, flips, rotations, colour changes: ``benchmarks/onnx_agreement.real_photos``), as JPEG files."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from onnx_agreement import real_photos

    folder.mkdir(parents=True, exist_ok=True)
    for index, (_, image) in enumerate(real_photos()):
        image.save(folder / f"photo-{index:03d}.jpg", quality=92)
    return folder


def write_flat_pictures(folder: Path, count: int = 24) -> Path:
    """``count`` pictures of one dark colour each, with faint noise: a calibration that sets every
    activation range far too narrow for photos."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        colour = generator.integers(0, 40, size=3)
        pixels = np.clip(colour + generator.normal(0, 2, size=(240, 320, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"flat-{index:02d}.png")
    return folder
