"""Drawing a word's heatmap over its photo, and writing the overlays as named PNG files."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.core.explain.gradcam import heatmap_size

# A perceptually ordered dark-blue -> cyan -> yellow -> red ramp (in the spirit of "turbo").
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[48, 18, 59], [40, 150, 240], [60, 230, 130], [250, 190, 40], [200, 30, 10]], np.float32)


def colourize(heatmap: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours."""
    values = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0, 1)
    channels = [np.interp(values, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, -1)).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, *, alpha: float = 0.5, max_side: int | None = None
            ) -> Image.Image:
    """``image`` with ``heatmap`` (values in [0, 1]) laid over it, at the heatmap's size: the image's
    height x width, or its geometry scaled down as ``explain`` bounds its maps (``heatmap_size``).
    ``max_side`` shrinks the result so that its longer side is at most that many pixels."""
    heatmap = np.asarray(heatmap, np.float32)
    size = (heatmap.shape[1], heatmap.shape[0]) if heatmap.ndim == 2 and heatmap.size else None
    if size is None or size not in (image.size, heatmap_size(image.size, max(size))):
        raise ValueError(f"the heatmap is {' x '.join(map(str, heatmap.shape[::-1]))} but the image is "
                         f"{image.width} x {image.height} (a heatmap has the image's size or its shape "
                         "scaled down)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be from 0 to 1, got {alpha}")
    image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    heat = Image.fromarray(heatmap, mode="F")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image, heat = image.resize(size, Image.Resampling.BILINEAR), heat.resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colourize(np.asarray(heat)))
    return Image.blend(image, colours, alpha)


def overlay_png(image: Image.Image, heatmap: np.ndarray, *, max_side: int | None = None) -> bytes:
    """``overlay(image, heatmap, max_side=max_side)`` as PNG bytes."""
    buffer = io.BytesIO()
    overlay(image, heatmap, max_side=max_side).save(buffer, format="PNG", compress_level=1)  # 3x faster than 6
    return buffer.getvalue()


MAX_NAME_WORD = 40  # characters of a word kept in an overlay's file name


def overlay_name(stem: str, index: int, word: str) -> str:
    """``NAME.NN-WORD.png`` (``index`` counts from 1), with characters unsafe in file names replaced
    and the word cut to ``MAX_NAME_WORD`` characters."""
    safe = re.sub(r"[^\w'-]+", "_", word).strip("_")[:MAX_NAME_WORD] or "word"
    return f"{stem}.{index:02d}-{safe}.png"


def write_overlays(explanation, folder: str | os.PathLike, stem: str, *, max_side: int | None = None) -> list[Path]:
    """Each word's overlay of ``explanation`` as ``folder/STEM.NN-WORD.png``; the paths, in word order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, word in enumerate(explanation.words, 1):
        path = folder / overlay_name(stem, number, word.word)
        overlay(explanation.image, word.heatmap, max_side=max_side).save(path)
        paths.append(path)
    return paths
