"""Checks that a word's heatmap shows what the model used, rather than what merely looks plausible.

- Deletion test: replace the most heated ``fraction`` of the pixels the model sees with the image's
  mean colour; the word's probability should fall more than when as many random pixels are replaced.
- Randomisation test (Adebayo et al., 2018, "Sanity checks for saliency maps"): with the encoder's
  last block re-initialised at random, the maps of the same caption must change (their rank
  correlation with the trained model's maps drops), unlike a method that only finds edges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from captioner.core.explain.gradcam import Explanation, resize_heatmap, visible_mask
from captioner.core.model.encoders import EfficientNetBackbone, ResNetBackbone


@dataclass(frozen=True)
class Deletion:
    word: str
    probability: float  # on the intact image
    after_heat: float  # with the most heated pixels replaced
    after_random: float  # with as many random pixels replaced

    @property
    def heat_drop(self) -> float:
        """How far the probability falls when the most heated pixels are replaced."""
        return self.probability - self.after_heat

    @property
    def random_drop(self) -> float:
        """How far it falls when random pixels are replaced."""
        return self.probability - self.after_random


def replace_pixels(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` with the pixels where ``mask`` is set replaced by the image's mean colour."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[mask] = np.rint(pixels.reshape(-1, 3).mean(0)).astype(np.uint8)
    return Image.fromarray(pixels)


def hottest(heatmap: np.ndarray, visible: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The ``fraction`` of the visible pixels with the most heat (ties broken at random)."""
    count = int(round(fraction * visible.sum()))
    heat = np.where(visible, heatmap, -1.0).ravel()
    order = np.lexsort((rng.random(heat.size), -heat))  # by heat, descending; random among equals
    mask = np.zeros(heat.size, bool)
    mask[order[:count]] = True
    return mask.reshape(heatmap.shape)


def random_pixels(visible: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of the visible pixels, chosen at random."""
    return hottest(np.zeros(visible.shape, np.float32), visible, fraction, rng)


def deletion_test(captioner, explanation: Explanation, *, fraction: float = 0.2, random_draws: int = 3,
                  seed: int = 0) -> list[Deletion]:
    """For each word of ``explanation``: its probability on the intact image, with its heatmap's top
    ``fraction`` of the visible pixels replaced, and with as many random pixels replaced (the mean over
    ``random_draws`` draws); all in one batched scoring pass."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    if not explanation.words:
        return []
    rng = np.random.default_rng(seed)
    image, count = explanation.image, len(explanation.words)
    visible = visible_mask(image.size, captioner.config)
    heatmaps = [resize_heatmap(w.heatmap, image.size) for w in explanation.words]  # bounded maps: to the image's size
    images = [replace_pixels(image, hottest(heatmap, visible, fraction, rng)) for heatmap in heatmaps]
    images += [replace_pixels(image, random_pixels(visible, fraction, rng)) for _ in range(count * random_draws)]
    scores = captioner.score(images, explanation.caption)
    return [Deletion(word.word, word.probability, scores[i][i].probability,
                     float(np.mean([scores[count * (1 + d) + i][i].probability for d in range(random_draws)])))
            for i, word in enumerate(explanation.words)]


def last_block(backbone: nn.Module) -> list[nn.Module]:
    """The modules between the encoder's second-to-last block and its last convolutional feature map:
    EfficientNet-Lite's last MBConv block and its 1x1 head convolution; ResNet's last bottleneck."""
    if isinstance(backbone, EfficientNetBackbone):
        net = backbone.net
        return [net._blocks[-1], net._conv_head, net._bn1]
    if isinstance(backbone, ResNetBackbone):
        return [backbone[7][-1]]
    raise TypeError(f"no last block known for {type(backbone).__name__}")


def randomise_last_block(backbone: nn.Module, seed: int = 0) -> None:
    """Re-initialise the encoder's last block (``last_block``) at random, in place, as a fresh layer
    is; call it before the backbone is fused for inference."""
    torch.manual_seed(seed)
    for block in last_block(backbone):
        for module in block.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


def randomised_captioner(source: str | os.PathLike | None = None, device: str = "cpu", seed: int = 0):
    """A new (uncached) ``Captioner`` for ``source`` whose encoder's last block is random."""
    from captioner.core.inference import Captioner
    from captioner.core.repository.storage import load_model

    loaded = load_model(source, device)
    randomise_last_block(loaded.model.encoder.backbone, seed)
    return Captioner(loaded, torch.device(device))


def rank_correlation(first: np.ndarray, second: np.ndarray, where: np.ndarray | None = None,
                     max_points: int = 20_000) -> float:
    """Spearman's rank correlation of two maps over the pixels in ``where`` (ties get their mean rank;
    at most about ``max_points`` evenly spaced pixels are compared). NaN when a map is constant."""
    where = np.ones(first.shape, bool) if where is None else where
    a, b = first[where], second[where]
    step = max(1, a.size // max_points)
    a, b = _ranks(a[::step]), _ranks(b[::step])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]

