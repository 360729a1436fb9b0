"""Where the model looked: caption scoring and per-word Grad-CAM heatmaps.

``score`` gives each word of a caption the probability the model assigns it after the words before
it (teacher forcing: ``<start> w1 ... wn <end>`` fed to the decoder), one pass for a batch of images.

``explain`` differentiates that same pass. Grad-CAM (Selvaraju et al., 2017): with ``A`` the encoder's
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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from captioner.core.images import MAX_ASPECT, ImageSource, load_for
from captioner.core.model import ShowAndTell, packed_targets
from captioner.core.options import DecodeOptions
from captioner.core.vocabulary import END, END_ID, START_ID, UNK_ID, Vocabulary, tokenize

MAX_CAPTION_WORDS = 198  # the longest sequence the model format allows (max_length 200) less <start> and <end>
# Longest side of the heatmaps ``explain`` returns unless told otherwise: plenty for display (a map holds
# one value per cell of the encoder's grid, 7 x 7 for a 224-pixel input), at most 4 MB per map.
DEFAULT_HEATMAP_SIDE = 1024


@dataclass(frozen=True)
class WordScore:
    """A caption word (or ``<end>``) and the probability the model gives it after the words before it.
    ``known`` is False for a word outside the model's vocabulary, which is scored as ``<unk>``."""
    word: str
    probability: float
    known: bool = True

    def to_dict(self) -> dict:
        return {"word": self.word, "probability": self.probability, "known": self.known}


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


def encode_caption(vocab: Vocabulary, caption: str) -> tuple[list[str], list[int], list[bool]]:
    """(words, ``<start>`` + ids + ``<end>``, whether each word is in the vocabulary); ``ValueError``
    for a caption without words or longer than the model format allows."""
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be text, got {type(caption).__name__}")
    words = tokenize(caption)
    if not words:
        raise ValueError("the caption has no words to score")
    if len(words) > MAX_CAPTION_WORDS:
        raise ValueError(f"the caption has {len(words)} words; at most {MAX_CAPTION_WORDS} can be scored")
    known = [word in vocab for word in words]
    return words, [START_ID, *(vocab.index.get(word, UNK_ID) for word in words), END_ID], known


def word_log_probs(model: ShowAndTell, embeddings: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Teacher forcing through ``Decoder.forward``: ``(B, len(ids) - 1)`` float64 log-probabilities of every
    token after ``<start>`` (the words, then ``<end>``), one row per image embedding."""
    batch, length = embeddings.size(0), len(ids)
    device = embeddings.device
    captions = torch.tensor(list(ids), device=device).expand(batch, length)
    lengths = [length] * batch
    logits = model.decoder(embeddings, captions, lengths)  # packed, time-major
    rows = packed_targets(torch.arange(batch, device=device).view(-1, 1).expand(batch, length), lengths)
    steps = packed_targets(torch.arange(length, device=device).expand(batch, length), lengths)
    # float64 for the last step: a word the model is sure of keeps a probability distinguishable from 1
    chosen = torch.log_softmax(logits.double(), 1).gather(1, packed_targets(captions, lengths).view(-1, 1)).squeeze(1)
    return chosen.new_zeros(batch, length).index_put((rows, steps), chosen)[:, 1:]


def own_word_log_probs(model: ShowAndTell, embeddings: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """``(B,)`` float64: row ``i``'s log-probability of word ``i`` (``ids[i + 1]``), as
    ``word_log_probs(model, embeddings, ids)[i, i]``, for ``B`` at most the number of words.

    Teacher forcing through ``Decoder.forward`` with row ``i`` cut after the words it needs, and the
    softmax taken at its last step only: about half the decoder's steps, and one softmax row per word
    instead of one per word and step (for a 198-word caption and a 1,197-word vocabulary, 2 MB of
    float64 softmax instead of 0.4 GB, with as much again for its gradient)."""
    batch, length = embeddings.size(0), len(ids)
    device = embeddings.device
    captions = torch.tensor(list(ids), device=device).expand(batch, length)
    lengths = [row + 2 for row in range(batch)]  # the image, <start>, then words 1 to row
    logits = model.decoder(embeddings, captions, lengths)  # packed, time-major
    rows = packed_targets(torch.arange(batch, device=device).view(-1, 1).expand(batch, length), lengths)
    steps = packed_targets(torch.arange(length, device=device).expand(batch, length), lengths)
    last = torch.nonzero(steps == rows + 1).squeeze(1)  # each row's last step, where its own word is predicted
    order = last[torch.argsort(rows[last])]  # by row
    targets = packed_targets(captions, lengths)[order]
    return torch.log_softmax(logits[order].double(), 1).gather(1, targets.view(-1, 1)).squeeze(1)


def score(captioner, images: ImageSource | Sequence[ImageSource], caption: str
          ) -> list[WordScore] | list[list[WordScore]]:
    """Each word of ``caption`` (and ``<end>``) with its probability for one image, or for each image of
    a list (one batched pass). Raises ``ImageError`` for an unusable image, ``ValueError`` for a caption
    without words."""
    words, ids, known = encode_caption(captioner.vocab, caption)
    pixels, single = captioner.pixels_of(images)
    if pixels is None:
        return []
    features = captioner.backbone_features(pixels)
    model = captioner.model
    with torch.inference_mode():
        embeddings = model.encoder.project(features.to(next(model.parameters()).device))
        probabilities = word_log_probs(model, embeddings, ids).double().exp().tolist()
    scores = [[WordScore(word, p, ok) for word, p, ok in zip([*words, END], row, [*known, True])]
              for row in probabilities]
    return scores[0] if single else scores


def explain(captioner, image: ImageSource, caption: str | None = None, *, beam_size: int = 3,
            max_length: int | None = None, heatmap_side: int | None = DEFAULT_HEATMAP_SIDE) -> Explanation:
    """Per-word Grad-CAM heatmaps of ``caption`` (``None``: the model's own caption, decoded with
    ``beam_size`` and ``max_length``) for one image, decoded as the caption path decodes it.

    The maps have the decoded image's geometry scaled so that its longer side is at most
    ``heatmap_side`` pixels (``heatmap_size``; default ``DEFAULT_HEATMAP_SIDE``); ``None`` keeps the
    decoded image's size. Raises ``ImageError`` for an unusable image, ``ValueError`` for a caption
    without words or bad settings."""
    from captioner.core.inference import caption_features

    options = DecodeOptions(beam_size=beam_size, num_candidates=1, max_length=max_length)
    options.resolved(captioner.config.max_length)  # refuse bad settings before any work
    _check_side(heatmap_side)
    picture = load_for(image, captioner.preprocess)
    model, backbone = captioner.model, captioner.model.encoder.backbone
    device = next(model.parameters()).device
    with torch.no_grad():
        feature_map = backbone.feature_map(captioner.preprocess(picture).unsqueeze(0).to(device))
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
    crop, x_axis, y_axis = _geometry(size, config)
    rows = _axis(size[1], *y_axis, crop, 1, height)[:, 0] > 0
    columns = _axis(size[0], *x_axis, crop, 1, width)[:, 0] > 0
    return rows[:, None] & columns[None, :]


def _check_side(heatmap_side: int | None) -> None:
    if heatmap_side is not None and (isinstance(heatmap_side, bool) or not isinstance(heatmap_side, int)
                                     or heatmap_side < 1):
        raise ValueError(f"heatmap_side must be a whole number of at least 1 or None, got {heatmap_side!r}")


# --- from the feature map's grid back to the image ----------------------------------------------

def _geometry(size: tuple[int, int], config) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    """The model's input size and, for x and y: (offset in the original image, scale to the resized image, crop start in the resized
    image), so that a position ``p`` in the original lies at ``(p - offset) * scale - start`` in the
    model's square input. Mirrors ``images.build_preprocessor``."""
    width, height = size
    crop = config.image_size
    if config.resize_mode == "squash":
        return crop, (0.0, crop / width, 0.0), (0.0, crop / height, 0.0)
    left = top = 0
    short, long = min(width, height), max(width, height)
    if long > short * MAX_ASPECT:  # images._limit_aspect
        keep = max(1, round(short * MAX_ASPECT))
        if width > height:
            left, width = (width - keep) // 2, keep
        else:
            top, height = (height - keep) // 2, keep
    short, long = min(width, height), max(width, height)
    new_long = int(config.resize * long / short)
    new_width, new_height = (config.resize, new_long) if width <= height else (new_long, config.resize)
    start_x, start_y = (int(round((side - crop) / 2.0)) for side in (new_width, new_height))  # _centre_crop
    return crop, (left, new_width / width, start_x), (top, new_height / height, start_y)


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
        crop, x_axis, y_axis = geometry
        width, height = out_size if out_size is not None else size
        self.rows = _axis(size[1], *y_axis, crop, cells[0], height)  # (height, cells[0])
        self.columns = _axis(size[0], *x_axis, crop, cells[1], width)  # (width, cells[1])

    def resample(self, grid: np.ndarray) -> np.ndarray:
        """``grid`` (values in [0, 1]) on the image: float32 (height, width), values in [0, 1]."""
        return np.clip(self.rows @ np.asarray(grid, np.float32) @ self.columns.T, 0, 1).astype(np.float32)


def _normalised(grid: np.ndarray) -> np.ndarray:
    """``grid`` scaled to [0, 1] by its peak (all zero when it has none)."""
    peak = float(grid.max())
    return (grid / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(grid)).astype(np.float32)
