"""The real photos an int8 encoder is made from: one part calibrates it, another part, never seen by
the calibration, checks its captions against fp32's.

A folder of photos (``--calibration DIR``, ``$CAPTIONER_CALIBRATION``) is split in two by the SHA-256
of each file's bytes (``split_photos``): the split does not depend on file names or their order, and
a copy of a photo under another name lands on the same side, so the check never sees a photo that
calibrated the graph. A separate check folder (``--check DIR``) checks instead, with every photo of
the first folder calibrating.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from captioner.core.errors import CaptionerError
from captioner.core.images.preprocess import Preprocessor, load_pixels

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ENVIRONMENT = "CAPTIONER_CALIBRATION"
MIN_CALIBRATION = 20  # fewer photos cover too few activations to set the int8 ranges


class CalibrationError(CaptionerError):
    """No usable calibration photos: a folder that is missing, empty, or holds too few readable photos."""


@dataclass(frozen=True)
class PhotoSets:
    """The photos that calibrate an int8 graph and those that check its captions (never the same file)."""

    calibration: tuple[Path, ...]
    check: tuple[Path, ...]
    source: str  # where they came from, for messages and the graph's metadata


def photos_in(folder: str | os.PathLike) -> list[Path]:
    """The photos in ``folder`` and its subfolders (hidden files and folders left out), sorted.
    Raises ``CalibrationError`` when ``folder`` is not a folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CalibrationError(f"no photo folder {str(folder)!r}")
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def split_photos(photos: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(calibration, check): each photo goes to one side by the first byte of its content's SHA-256;
    a file's duplicates go with it, and the check side holds about half."""
    sides: tuple[list[Path], list[Path]] = ([], [])
    seen: set[str] = set()
    for path in photos:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        sides[int(digest[:2], 16) % 2].append(path)
    return sides


def photo_sets(calibration: str | os.PathLike | None = None, check: str | os.PathLike | None = None
               ) -> PhotoSets | None:
    """The photo sets for an int8 build: ``calibration`` (else ``$CAPTIONER_CALIBRATION``) split in
    two, or all of it calibrating and ``check`` checking. None when no folder is given or set.
    Raises ``CalibrationError`` for a folder that is not there or holds too few photos to calibrate."""
    folder = calibration or os.environ.get(ENVIRONMENT, "").strip() or None
    if folder is None:
        return None
    photos = photos_in(folder)
    if check is None:
        calibrating, checking = split_photos(photos)
        source = f"{folder} (split by content hash)"
    else:
        calibrating, checking = photos, photos_in(check)
        held_out = {hashlib.sha256(path.read_bytes()).digest() for path in calibrating}
        checking = [path for path in checking if hashlib.sha256(path.read_bytes()).digest() not in held_out]
        source = f"{folder}, checked on {check}"
    if len(calibrating) < MIN_CALIBRATION:
        raise CalibrationError(f"{len(calibrating)} calibration photos in {folder}: an int8 encoder needs at "
                               f"least {MIN_CALIBRATION} (about 100 or more calibrate it well)")
    return PhotoSets(tuple(calibrating), tuple(checking), source)


def pixels_of(photos: Sequence[Path], preprocess: Preprocessor, batch_size: int = 16) -> list[torch.Tensor]:
    """The photos as model input in batches of ``batch_size``; unreadable files are left out."""
    batches = []
    for start in range(0, len(photos), batch_size):
        pixels, _, _ = load_pixels(list(photos[start:start + batch_size]), preprocess)
        if pixels is not None:
            batches.append(pixels)
    return batches
