"""The one inference path: image sources -> pixels -> backbone features -> captions -> results.

Every front end (the CLI, the Python API, the app's shared batcher and batch tab, evaluation,
validation during training, the bundled-model build, Ray) goes through ``captions.caption_features``,
directly or through ``Captioner``:

    sources --prepare--> pixels --backbone_features--> features --caption_features--> CaptionResult

``Captioner.backbone_features`` and the decoder step it hands the search are the one place a backend
plugs in (torch, or ONNX Runtime on CPU: ``backends``); ``caption_features`` projects, decodes and
builds the results for any model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from captioner.core.backends.choice import requested_backend, resolve_backend, start
from captioner.core.backends.onnx_export import SHIPPED_FILES
from captioner.core.captions import caption_features
from captioner.core.confidence import rule_for
from captioner.core.devices import select_device
from captioner.core.errors import ImageError
from captioner.core.explain import gradcam, scoring
from captioner.core.explain.gradcam import DEFAULT_HEATMAP_SIDE
from captioner.core.images.decode import ImageSource
from captioner.core.images.preprocess import load_pixels, prepare_pixels, preprocessor_for
from captioner.core.model.encoders import optimize_for_inference
from captioner.core.options import DecodeOptions
from captioner.core.repository.storage import LoadedModel, describe_source, load_model
from captioner.core.results import CaptionResult, failed


class Captioner:
    """Captions images with one loaded model; thread-safe (inference only touches read-only state).

    ``backend`` is ``"torch"``, ``"onnx"`` (the backbone and the decoder step run in ONNX Runtime:
    ``backends.onnx_runtime``) or ``"auto"`` (see ``backends.choice.resolve_backend``). With torch on CPU its
    encoder's backbone is optimised for inference when it is created (``encoders.optimize_for_inference``:
    same outputs, faster), so ``model`` is for inference only and its ``state_dict`` is no longer the
    model file's.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, backend: str = "torch"):
        self.loaded, self.device = loaded, device
        self.model, self.vocab, self.config = loaded.model, loaded.vocab, loaded.config
        self._onnx = start(loaded, backend, device)  # None: torch
        self.backend = "onnx" if self._onnx is not None else "torch"
        if device.type == "cpu" and self._onnx is None:
            self.model.encoder.backbone = optimize_for_inference(self.model.encoder.backbone)
        self.preprocess = preprocessor_for(self.config)
        self.confidence = rule_for(self.config.extra, loaded.path, self.config.emits_classes)
        self._class_names: list[str] | None = None

    @property
    def info(self) -> dict[str, Any]:
        return {"source": self.loaded.source, "path": str(self.loaded.path), "backbone": self.config.backbone,
                "encoder_output": self.config.encoder_output, "vocab_size": len(self.vocab),
                "device": str(self.device), "backend": self.backend}

    @property
    def class_names(self) -> list[str] | None:
        """ImageNet class names, for models whose encoder emits class probabilities."""
        if self._class_names is None and self.config.emits_classes:
            from captioner.core.model.imagenet_classes import imagenet_class_names

            self._class_names = imagenet_class_names()
        return self._class_names

    # --- the path, step by step -------------------------------------------------------------

    def prepare(self, source: ImageSource) -> torch.Tensor:
        """One image as model input ``(3, H, W)``: decoded once, checked, preprocessed.
        Raises ``ImageError`` for an unusable image."""
        pixels = prepare_pixels(source, self.preprocess)
        if isinstance(pixels, str):
            raise ImageError(pixels)
        return pixels

    def backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's outputs for a preprocessed batch ``(B, 3, H, W)``, from the chosen backend."""
        if self._onnx is not None:
            return self._onnx(pixels)
        with torch.inference_mode():
            return self.model.encoder.backbone_features(pixels.to(self.device))

    def caption_pixels(self, pixels: torch.Tensor, options: DecodeOptions | None = None) -> list[CaptionResult]:
        """Caption a preprocessed batch ``(B, 3, H, W)``."""
        options = (options or DecodeOptions()).resolved(self.config.max_length)  # refuse bad settings before work
        return caption_features(self.model, self.vocab, self.backbone_features(pixels), options,
                                steps=self._onnx.steps if self._onnx is not None else None,
                                class_names=self.class_names, model_name=self.loaded.source,
                                confidence=self.confidence)

    # --- what callers use -------------------------------------------------------------------

    def caption(self, images: ImageSource | Sequence[ImageSource], options: DecodeOptions | None = None,
                **settings: Any) -> CaptionResult | list[CaptionResult]:
        """Caption one image (returns one result) or a list of images (one batched forward, a list back).

        Settings are a ``DecodeOptions`` or its fields as keywords (``beam_size=1`` is greedy).
        Raises ``ImageError`` for an unusable image (for a list: naming the first one), ``ValueError``
        for bad settings. ``caption_many`` reports bad images per item instead.
        """
        options = _options(options, settings)
        pixels, single = self.pixels_of(images)
        if pixels is None:
            return []
        results = self.caption_pixels(pixels, options)
        return results[0] if single else results

    def pixels_of(self, images: ImageSource | Sequence[ImageSource]) -> tuple[torch.Tensor | None, bool]:
        """(the batch for one image or a list of them, whether one image was given); ``None`` for an
        empty list. Raises ``ImageError`` for an unusable image (for a list: naming the first one)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            return None, single
        pixels, _, failures = load_pixels(batch, self.preprocess)
        if failures:
            index, why = failures[0]
            raise ImageError(why if single else f"image {index + 1} of {len(batch)}: {why}")
        return pixels, single

    def caption_many(self, sources: Sequence[ImageSource], options: DecodeOptions | None = None, *,
                     names: Sequence[str] | None = None, batch_size: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> list[CaptionResult]:
        """One result per source, in order, ``batch_size`` images per forward pass. An unusable image
        gets a result with ``error`` set and never costs the others a second pass. ``names`` label
        the results (default: the paths given). ``progress(done, total)`` runs after each pass."""
        options = _options(options, {}).resolved(self.config.max_length)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        names = list(names) if names is not None else [_name(source) for source in sources]
        results: list[CaptionResult | None] = [None] * len(sources)
        with ThreadPoolExecutor(2) as pool:  # decoding releases the GIL: two images at once
            for start in range(0, len(sources), batch_size):
                chunk = list(sources[start:start + batch_size])
                pixels, kept, failures = load_pixels(chunk, self.preprocess, pool)
                for index, why in failures:
                    results[start + index] = failed(names[start + index], why, self.loaded.source)
                if pixels is not None:
                    for index, result in zip(kept, self.caption_pixels(pixels, options)):
                        results[start + index] = result.named(names[start + index])
                if progress:
                    progress(min(start + batch_size, len(sources)), len(sources))
        return results  # type: ignore[return-value]

    def score(self, images: ImageSource | Sequence[ImageSource], caption: str) -> list:
        """Each word of ``caption`` (and ``<end>``) with its probability, per image (``explain.score``)."""
        return scoring.score(self, images, caption)

    def explain(self, image: ImageSource, caption: str | None = None, *, beam_size: int = 3,
                max_length: int | None = None, heatmap_side: int | None = DEFAULT_HEATMAP_SIDE):
        """Per-word Grad-CAM heatmaps of ``caption`` or of the model's own caption, at most
        ``heatmap_side`` pixels on the longer side (None: the decoded image's size) (``explain.explain``)."""
        return gradcam.explain(self, image, caption, beam_size=beam_size, max_length=max_length, heatmap_side=heatmap_side)


def _options(options: DecodeOptions | None, settings: dict[str, Any]) -> DecodeOptions:
    if options is not None and settings:
        raise TypeError("pass either a DecodeOptions or its fields as keywords, not both")
    return options if options is not None else DecodeOptions(**settings)


def _name(source: ImageSource) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


_cache: dict[tuple[str, str, str], Captioner] = {}
_cache_lock = threading.Lock()


def load_captioner(source: str | os.PathLike | None = None, device: str | torch.device | None = None,
                   backend: str | None = None) -> Captioner:
    """The captioner for ``source`` (a directory, ``owner/name[@rev]``, or None for
    ``$CAPTIONER_MODEL`` / the bundled model) on ``device`` with ``backend`` (``auto``, ``torch`` or
    ``onnx``; None: ``$CAPTIONER_BACKEND``, else ``auto``), loaded once and cached. A Hub model loaded
    for the onnx backend brings its repository's ONNX export (``onnx/``) when it has one."""
    device = select_device(device)
    backend = requested_backend(backend)
    first_choice = resolve_backend(backend, device)
    name = describe_source(source)
    with _cache_lock:
        for key in ((name, str(device), backend), (name, str(device), first_choice)):
            if key in _cache:  # "auto" shares the captioner of the backend it chose
                return _cache[key]
        onnx = first_choice == "onnx"  # ONNX Runtime runs the backbone from its graph: torch's is built if needed
        loaded = load_model(source, device, defer_backbone=onnx,
                            optional_files=SHIPPED_FILES if onnx else ())
        captioner = Captioner(loaded, device, backend)
        _cache[(name, str(device), backend)] = captioner
        _cache.setdefault((name, str(device), captioner.backend), captioner)  # auto fell back: not under "onnx"
        return captioner
