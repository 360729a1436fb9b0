"""The captioner users call: loaded once per (source, device), then fast and thread-safe."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from captioner.core.encoders import optimize_for_inference
from captioner.core.images import ImageSource, build_preprocessor, load_image
from captioner.core.model import Hypothesis
from captioner.core.repository import LoadedModel, describe_source, load_model
from captioner.core.vocabulary import END_ID, PAD_ID, START_ID


@dataclass
class Candidate:
    caption: str
    score: float  # mean log-probability per token (length-normalised); exp(score) is in (0, 1]
    words: list[tuple[str, float]]  # each word with the probability the decoder gave it


@dataclass
class CaptionResult:
    caption: str
    candidates: list[Candidate]
    top_classes: list[tuple[str, float]] | None = None  # for ImageNet-classifier encoders: (class, p)
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> list[tuple[str, float]]:
        return self.candidates[0].words if self.candidates else []

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["words"] = [{"word": w, "probability": p} for w, p in self.words]
        for candidate in data["candidates"]:
            candidate["words"] = [{"word": w, "probability": p} for w, p in candidate["words"]]
        if self.top_classes is not None:
            data["top_classes"] = [{"label": label, "probability": p} for label, p in self.top_classes]
        if not data["extra"]:
            del data["extra"]
        return data


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$CAPTIONER_DEVICE``, else cuda, then mps, then cpu."""
    device = device or os.environ.get("CAPTIONER_DEVICE") or None
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Captioner:
    """Captions images with one loaded model. On CPU its encoder's backbone is optimised for
    inference when it is created (``encoders.optimize_for_inference``: same outputs, faster), so
    ``model`` is for inference only and its ``state_dict`` is no longer the model file's."""

    def __init__(self, loaded: LoadedModel, device: torch.device):
        self.loaded, self.device = loaded, device
        self.model, self.vocab, self.config = loaded.model, loaded.vocab, loaded.config
        if device.type == "cpu":
            self.model.encoder.backbone = optimize_for_inference(self.model.encoder.backbone)
        self.preprocess = build_preprocessor(self.config.resize, self.config.image_size,
                                             self.config.mean, self.config.std)
        self._class_names: list[str] | None = None

    @property
    def info(self) -> dict[str, Any]:
        return {"source": self.loaded.source, "path": str(self.loaded.path), "backbone": self.config.backbone,
                "encoder_output": self.config.encoder_output, "vocab_size": len(self.vocab),
                "device": str(self.device)}

    def caption(self, images: ImageSource | Sequence[ImageSource], *, beam_size: int = 3,
                num_candidates: int | None = None, max_length: int | None = None,
                length_penalty: float = 1.0, top_classes: int = 5) -> CaptionResult | list[CaptionResult]:
        """Caption one image (returns one result) or a list of images (one batched forward, a list back).

        ``beam_size=1`` is greedy decoding. Raises ``ImageError`` for an unusable image.
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            return []
        pixels = torch.stack([self.preprocess(load_image(image, min_side=2 * self.config.resize)) for image in batch])
        results = self.caption_tensor(pixels, beam_size=beam_size, num_candidates=num_candidates,
                                      max_length=max_length, length_penalty=length_penalty,
                                      top_classes=top_classes)
        return results[0] if single else results

    @torch.inference_mode()
    def caption_tensor(self, pixels: torch.Tensor, *, beam_size: int = 3, num_candidates: int | None = None,
                       max_length: int | None = None, length_penalty: float = 1.0,
                       top_classes: int = 5) -> list[CaptionResult]:
        """Caption a preprocessed batch ``(B, 3, H, W)``."""
        if not 1 <= beam_size <= 50:
            raise ValueError(f"beam_size must be from 1 to 50, got {beam_size}")
        max_length = max_length or self.config.max_length
        if not 2 <= max_length <= 200:
            raise ValueError(f"max_length must be from 2 to 200, got {max_length}")
        features = self.model.encoder.backbone_features(pixels.to(self.device))
        embeddings = self.model.encoder.project(features)
        if beam_size == 1:
            hypotheses = [[h] for h in self.model.greedy(embeddings, max_length, length_penalty)]
        else:
            hypotheses = self.model.beam_search(embeddings, beam_size, max_length, num_candidates, length_penalty)
        classes = self._top_classes(features, top_classes) if self.config.emits_classes else [None] * len(hypotheses)
        return [CaptionResult(caption=cands[0].caption if cands else "", candidates=cands,
                              top_classes=cls, model=self.loaded.source)
                for cands, cls in zip(([self._candidate(h) for h in hs] for hs in hypotheses), classes)]

    def _candidate(self, hypothesis: Hypothesis) -> Candidate:
        words = []
        for token, log_prob in zip(hypothesis.tokens, hypothesis.token_log_probs):
            if token == END_ID:
                break
            if token not in (PAD_ID, START_ID):
                words.append((self.vocab.tokens[token], math.exp(log_prob)))
        return Candidate(" ".join(w for w, _ in words), hypothesis.score, words)

    def _top_classes(self, outputs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        if self._class_names is None:
            from captioner.core.imagenet_classes import imagenet_class_names

            self._class_names = imagenet_class_names()
        probs = outputs.float() if self.config.encoder_output == "class_probs" else outputs.float().exp()
        probs, index = probs.topk(k, dim=1)
        return [[(self._class_names[i], round(p, 6)) for p, i in zip(ps, ix)]
                for ps, ix in zip(probs.tolist(), index.tolist())]


_cache: dict[tuple[str, str], Captioner] = {}
_cache_lock = threading.Lock()


def load_captioner(source: str | os.PathLike | None = None, device: str | torch.device | None = None) -> Captioner:
    """The captioner for ``source`` (a directory, ``owner/name[@rev]``, or None for
    ``$CAPTIONER_MODEL`` / the bundled model) on ``device``, loaded once and cached."""
    device = select_device(device)
    key = (describe_source(source), str(device))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Captioner(load_model(source, device), device)
        return _cache[key]
