"""The stages of one loaded model's path (internal: ``Captioner`` is the public face).

    sources --prepare--> pixels --features--> backbone outputs --captions.caption_features--> CaptionResult

Front ends that batch requests themselves (the web app's shared batcher, Ray Serve) reach these
stages through ``Captioner.pipeline``: each caller prepares its own image (``prepare``: a bad image
fails only its own call) and the prepared images of many callers go through one forward pass
(``caption_batch``). Front ends that read their inputs themselves (the batch tab, Ray Data) hand
``caption_each`` what they read, or the error that stopped them, and get one result per input in order.
Nothing here is part of the stable API.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import torch

from captioner.core.captions import caption_features
from captioner.core.errors import ImageError
from captioner.core.images.decode import ImageSource
from captioner.core.images.preprocess import load_pixels, prepare_pixels, preprocessor_for
from captioner.core.options import DecodeOptions
from captioner.core.repository.storage import LoadedModel
from captioner.core.results import CaptionResult, failed

Forward = Callable[[torch.Tensor, DecodeOptions], "list[CaptionResult]"]


class Pipeline:
    """One loaded model's stages on ``device``; ``onnx`` is the ONNX Runtime backend (None: torch)."""

    def __init__(self, loaded: LoadedModel, device: torch.device, onnx: Any = None):
        self.loaded, self.device, self.onnx = loaded, device, onnx
        self.preprocess = preprocessor_for(loaded.config)
        self._class_names: list[str] | None = None
        self._forward: Forward = self._caption_pixels

    @property
    def class_names(self) -> list[str] | None:
        """ImageNet class names, for models whose encoder emits class probabilities."""
        if self._class_names is None and self.loaded.config.emits_classes:
            from captioner.core.model.imagenet_classes import imagenet_class_names

            self._class_names = imagenet_class_names()
        return self._class_names

    def prepare(self, source: ImageSource) -> torch.Tensor:
        """One image as model input ``(3, H, W)``: decoded once, checked, preprocessed.
        Raises ``ImageError`` for an unusable image."""
        pixels = prepare_pixels(source, self.preprocess)
        if isinstance(pixels, str):
            raise ImageError(pixels)
        return pixels

    def load(self, sources: Sequence[ImageSource], pool: Executor | None = None
             ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
        """``(batch of the usable sources, their indices, (index, why) for the others)``."""
        return load_pixels(sources, self.preprocess, pool)

    def load_all(self, sources: Sequence[ImageSource]) -> torch.Tensor | None:
        """The batch of every source (None for none); ``ImageError`` naming the first unusable one."""
        pixels, _, failures = self.load(sources)
        if failures:
            index, why = failures[0]
            raise ImageError(_numbered(index, len(sources), _name(sources[index]), why))
        return pixels

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's outputs for a preprocessed batch ``(B, 3, H, W)``, from the chosen backend."""
        if self.onnx is not None:
            return self.onnx(pixels)
        with torch.inference_mode():
            return self.loaded.model.encoder.backbone_features(pixels.to(self.device))

    def caption_batch(self, pixels: torch.Tensor, options: DecodeOptions) -> list[CaptionResult]:
        """Caption a prepared batch ``(B, 3, H, W)``: the forward pass every caption goes through
        (inside the wrapper of ``with_forward``, when one was given). ``ValueError`` for bad options."""
        return self._forward(pixels, options)

    def with_forward(self, wrap: Callable[[Forward], Forward]) -> Pipeline:
        """These stages, sharing the model, with every forward pass run inside ``wrap`` (e.g. ``spaces.GPU``
        on ZeroGPU hardware). Its arguments (a CPU pixel batch and the options) and its results are plain
        data, so the wrapper may run it in another process."""
        wrapped = copy.copy(self)
        wrapped._forward = wrap(self._caption_pixels)
        return wrapped

    def _caption_pixels(self, pixels: torch.Tensor, options: DecodeOptions) -> list[CaptionResult]:
        options = options.resolved(self.loaded.config.max_length)  # bad settings refused before any work
        return caption_features(self.loaded.model, self.loaded.vocab, self.features(pixels), options,
                                steps=self.onnx.steps if self.onnx is not None else None,
                                class_names=self.class_names, model_name=self.loaded.source)

    def caption_each(self, entries: Sequence[ImageSource | Exception], options: DecodeOptions, *,
                     names: Sequence[str | None] | None = None, batch_size: int = 8,
                     progress: Callable[[int, int], None] | None = None,
                     raise_errors: bool = False) -> list[CaptionResult]:
        """One result per entry, in order, ``batch_size`` images per forward pass.

        An entry is an image source, or the error that stopped a front end from reading one. An
        unusable entry gets a result with ``error`` set and never costs the others a second pass;
        with ``raise_errors`` it raises ``ImageError`` instead (naming the first, before any later
        pass). ``names`` label the results (default: the paths given). ``progress(done, total)`` runs
        after each pass. ``ValueError`` for bad options or ``batch_size``, before any image is read.
        """
        options = options.resolved(self.loaded.config.max_length)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        names = list(names) if names is not None else [_name(entry) for entry in entries]
        if len(names) != len(entries):
            raise ValueError(f"{len(names)} names for {len(entries)} images")
        results: list[CaptionResult | None] = [None] * len(entries)
        with ThreadPoolExecutor(2) as pool:  # decoding releases the GIL: two images at once
            for start in range(0, len(entries), batch_size):
                chunk = list(entries[start:start + batch_size])
                readable = [i for i, entry in enumerate(chunk) if not isinstance(entry, Exception)]
                pixels, kept, failures = self.load([chunk[i] for i in readable], pool)
                failures = sorted([(i, str(entry)) for i, entry in enumerate(chunk) if isinstance(entry, Exception)]
                                  + [(readable[i], why) for i, why in failures])
                if failures and raise_errors:
                    index, why = failures[0]
                    raise ImageError(_numbered(start + index, len(entries), names[start + index], why))
                for index, why in failures:
                    results[start + index] = failed(names[start + index], why, self.loaded.source)
                if pixels is not None:
                    for index, result in zip(kept, self.caption_batch(pixels, options)):
                        results[start + readable[index]] = result.named(names[start + readable[index]])
                if progress:
                    progress(min(start + batch_size, len(entries)), len(entries))
        return results  # type: ignore[return-value]


def _name(source: ImageSource | Exception) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def _numbered(index: int, total: int, name: str | None, why: str) -> str:
    """``why`` an image could not be captioned, saying which one when there were several."""
    if total == 1:
        return why
    return f"image {index + 1} of {total}{f' ({name})' if name else ''}: {why}"
