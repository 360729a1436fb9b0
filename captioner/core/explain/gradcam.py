"""Where the model looked: per-word Grad-CAM heatmaps.

``explain`` differentiates the teacher-forced pass that ``scoring.score`` runs. Grad-CAM (Selvaraju et al., 2017): with ``A`` the encoder's
last convolutional feature map and ``y`` one word's log-probability, the channel weights are the
spatially averaged gradients ``dy/dA``, and the word's map is ``ReLU(sum_c weight_c * A_c)``, scaled
to [0, 1] and laid back onto the image (undoing the preprocessing's crop or squash). The image is
decoded as the caption path decodes it (``images.load_for``: a large photo at reduced size), so the
model sees the same pixels and gives the same caption and word probabilities as ``caption`` and
``score``. The maps are resampled straight from the feature map's grid to the image's geometry
scaled down to ``heatmap_side`` pixels on the longer side (``heatmap_size``), so their memory stays
bounded whatever the photo's size.

The feature map is computed once; the rest of the model (the backbone's pooling and classifier head,
the projection, the decoder) runs on one copy of it per word, so a single backward pass gives every
word its own gradient: rows of a batch do not interact. On CUDA that pass runs without cuDNN, whose
LSTM has no backward pass in eval mode (``torch.backends.cudnn.flags`` is process-wide, so work on
other threads meanwhile runs on PyTorch's own kernels too); the model is never switched to training
mode, so dropout and BatchNorm behave exactly as when captioning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from captioner.core.captions import caption_features
from captioner.core.explain.scoring import encode_caption, own_word_log_probs
from captioner.core.images.decode import ImageSource
from captioner.core.images.preprocess import CropGeometry, crop_geometry, load_for
from captioner.core.model.vocabulary import tokenize
from captioner.core.options import DecodeOptions

# Longest side of the heatmaps ``explain`` returns unless told otherwise: plenty for display (a map holds
# one value per cell of the encoder's grid, 7 x 7 for a 224-pixel input), at most 4 MB per map.
DEFAULT_HEATMAP_SIDE = 1024


@dataclass(frozen=True)
class ExplainedWord:
    word: str
    probability: float  # as in ``score``: given the image and the words before it
    grid: np.ndarray = field(repr=False)  # float32, peak 1 (or all 0): the map on the encoder's grid (7 x 7)
    layout: Layout = field(repr=False, compare=False)  # how the grid lies on the image

    @property
    def heatmap(self) -> np.ndarray:
        """The word's map on the image: float32 in [0, 1], shaped (height, width) of
        ``heatmap_size(explanation.image.size, heatmap_side)``. Resampled from ``grid`` on each access
        (milliseconds), so an explanation holds only the grids: keep the array to use it twice."""
        return self.layout.resample(self.grid)


@dataclass(frozen=True)
class Explanation:
    caption: str
    words: tuple[ExplainedWord, ...]
    # the decoded RGB image the maps belong to: the photo as the caption path decodes it (a large one at
    # reduced size); the maps have its geometry, scaled down to the ``heatmap_side`` asked for
    image: Image.Image = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"caption": self.caption,
                "words": [{"word": w.word, "probability": w.probability} for w in self.words]}


def explain(captioner, image: ImageSource, caption: str | None = None, *, beam_size: int = 3,
            max_length: int | None = None, heatmap_side: int | None = DEFAULT_HEATMAP_SIDE) -> Explanation:
    """Per-word Grad-CAM heatmaps of ``caption`` (``None``: the model's own caption, decoded with
    ``beam_size`` and ``max_length``) for one image, decoded as the caption path decodes it.

    The maps have the decoded image's geometry scaled so that its longer side is at most
    ``heatmap_side`` pixels (``heatmap_size``; default ``DEFAULT_HEATMAP_SIDE``); ``None`` keeps the
    decoded image's size. Raises ``ImageError`` for an unusable image, ``ValueError`` for a caption
    without words or bad settings."""
    options = DecodeOptions(beam_size=beam_size, num_candidates=1, max_length=max_length)
    options.resolved(captioner.config.max_length)  # refuse bad settings before any work
    _check_side(heatmap_side)
    picture = load_for(image, captioner.pipeline.preprocess)
    model, backbone = captioner.model, captioner.model.encoder.require_backbone()
    device = next(model.parameters()).device
    with torch.no_grad():
        feature_map = backbone.feature_map(captioner.pipeline.preprocess(picture).unsqueeze(0).to(device))
        if caption is None:
            caption = caption_features(model, captioner.vocab, backbone.head(feature_map), options)[0].caption
            if not tokenize(caption):
                return Explanation(caption, (), picture)
    words, ids, _ = encode_caption(captioner.vocab, caption)
    count = len(words)
    copies = feature_map.detach().repeat(count, 1, 1, 1).requires_grad_(True)  # one per word
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()
    with torch.enable_grad(), no_cudnn:
        own = own_word_log_probs(model, model.encoder.project(backbone.head(copies)), ids)  # row i: word i
        (gradients,) = torch.autograd.grad(own.sum(), copies)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    maps = torch.relu((weights * copies.detach()).sum(1)).float().cpu().numpy()  # (words, h, w)
    layout = Layout(picture.size, _geometry(picture.size, captioner.config), maps.shape[1:],
                    heatmap_size(picture.size, heatmap_side))
    explained = tuple(ExplainedWord(word, float(np.exp(lp)), _normalised(grid), layout)
                      for word, lp, grid in zip(words, own.detach().double().cpu().tolist(), maps))
    return Explanation(caption, explained, picture)


def heatmap_size(size: tuple[int, int], heatmap_side: int | None) -> tuple[int, int]:
    """(width, height) of the heatmaps of an image of ``size`` (width, height): that size scaled,
    aspect kept, so that its longer side is ``heatmap_side`` when it is longer than that (each side
    rounded, at least 1); ``None`` keeps ``size``."""
    _check_side(heatmap_side)
    width, height = size
    if heatmap_side is None or max(width, height) <= heatmap_side:
        return width, height
    scale = heatmap_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``heatmap`` resampled (bilinear) to ``size`` (width, height); float32 in [0, 1]."""
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape == (size[1], size[0]):
        return heatmap
    resized = Image.fromarray(heatmap).resize(tuple(size), Image.Resampling.BILINEAR)  # float32: mode "F"
    return np.clip(np.asarray(resized, np.float32), 0, 1)


def visible_mask(size: tuple[int, int], config, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Booleans: the pixels of a ``size`` (width, height) image that the model's input shows (the rest
    is cropped away by preprocessing, so every heatmap is zero there), on a grid of ``shape``
    (height, width: a heatmap's shape; default the image's own)."""
    height, width = shape if shape is not None else (size[1], size[0])
    geometry = _geometry(size, config)
    rows = _axis(size[1], *geometry.axis(1), geometry.crop, 1, height)[:, 0] > 0
    columns = _axis(size[0], *geometry.axis(0), geometry.crop, 1, width)[:, 0] > 0
    return rows[:, None] & columns[None, :]


def _check_side(heatmap_side: int | None) -> None:
    if heatmap_side is not None and (isinstance(heatmap_side, bool) or not isinstance(heatmap_side, int)
                                     or heatmap_side < 1):
        raise ValueError(f"heatmap_side must be a whole number of at least 1 or None, got {heatmap_side!r}")


# --- from the feature map's grid back to the image ----------------------------------------------

def _geometry(size: tuple[int, int], config) -> CropGeometry:
    """Where the model's input comes from in an image of ``size``, as the model's preprocessing crops it."""
    return crop_geometry(size, config.resize, config.image_size, config.resize_mode)


def _axis(pixels: int, offset: float, scale: float, start: float, crop: int, cells: int,
          out: int | None = None) -> np.ndarray:
    """(out, cells) bilinear weights from the grid's cells to ``out`` pixels spanning the image's
    ``pixels`` along one axis (default ``out = pixels``); zero for pixels the model never saw
    (cropped away)."""
    out = pixels if out is None else out
    centres = (np.arange(out) + 0.5) * (pixels / out)  # the out pixels' centres, in image pixels
    position = (centres - offset) * scale - start  # ... in input pixels
    inside = (position >= 0) & (position <= crop)
    cell = np.clip(position * cells / crop - 0.5, 0, cells - 1)
    low = np.floor(cell).astype(int)
    high = np.minimum(low + 1, cells - 1)
    weights = np.zeros((out, cells), np.float32)
    rows = np.arange(out)
    np.add.at(weights, (rows, low), (1 - (cell - low)) * inside)
    np.add.at(weights, (rows, high), (cell - low) * inside)
    return weights


class Layout:
    """Where the cells of a ``cells`` (rows, columns) grid lie on an image of ``size`` (width, height)
    with ``geometry`` (``_geometry``): bilinear weights onto ``out_size`` (width, height; default
    ``size``) pixels spanning that image."""

    def __init__(self, size: tuple[int, int], geometry, cells: tuple[int, int],
                 out_size: tuple[int, int] | None = None):
        width, height = out_size if out_size is not None else size
        self.rows = _axis(size[1], *geometry.axis(1), geometry.crop, cells[0], height)  # (height, cells[0])
        self.columns = _axis(size[0], *geometry.axis(0), geometry.crop, cells[1], width)  # (width, cells[1])

    def resample(self, grid: np.ndarray) -> np.ndarray:
        """``grid`` (values in [0, 1]) on the image: float32 (height, width), values in [0, 1]."""
        return np.clip(self.rows @ np.asarray(grid, np.float32) @ self.columns.T, 0, 1).astype(np.float32)


def _normalised(grid: np.ndarray) -> np.ndarray:
    """``grid`` scaled to [0, 1] by its peak (all zero when it has none)."""
    peak = float(grid.max())
    return (grid / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(grid)).astype(np.float32)
