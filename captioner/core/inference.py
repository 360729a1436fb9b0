"""The one inference path, as users call it: ``load_captioner`` and ``Captioner``.

    from captioner import load_captioner
    captioner = load_captioner()                   # cached: the same object for the same model
    result = captioner("photo.jpg")                # one image -> one CaptionResult
    results = captioner(paths, errors="return")    # a list -> a list, a bad image as a result with error

Every front end (the CLI, the Python API, the app's shared batcher and batch tab, evaluation,
validation during training, the bundled-model build, Ray) ends in ``captions.caption_features``,
through a ``Captioner``'s stages (``pipeline``). The backend (torch, or ONNX Runtime on CPU:
``backends``) plugs in there, once per loaded model.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch

from captioner.core.backends.choice import BackendChoice, choose_backend, start
from captioner.core.backends.onnx_export import SHIPPED_FILES
from captioner.core.devices import select_device
from captioner.core.explain import gradcam, scoring
from captioner.core.explain.gradcam import DEFAULT_HEATMAP_SIDE, Explanation
from captioner.core.explain.scoring import WordScore
from captioner.core.images.decode import ImageSource
from captioner.core.options import DecodeOptions
from captioner.core.pipeline import Forward, Pipeline
from captioner.core.repository.storage import LoadedModel, load_model, locate
from captioner.core.results import CaptionResult

Errors = Literal["raise", "return"]
BATCH_SIZE = 8  # images per forward pass when a list is captioned


class Captioner:
    """Captions images with one loaded model; thread-safe (inference only touches read-only state).

    Call it: ``captioner(image)`` gives one ``CaptionResult``, ``captioner([image, ...])`` a list.
    ``backend``: ``"torch"``, ``"onnx"`` (the backbone and the decoder step run in ONNX Runtime:
    ``backends.onnx_runtime``), ``"auto"``, or a ``BackendChoice`` (``backends.choice``); ``precision``
    (``"auto"``, ``"fp32"``, ``"int8"``; None: the choice's, else ``$CAPTIONER_PRECISION``, else auto)
    is the onnx backend's encoder arithmetic, and ``self.precision`` the one that runs. With torch on
    CPU the encoder's backbone is optimised for inference when it is created
    (``Encoder.optimize_for_inference``), so ``model`` is for inference only.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, backend: str | BackendChoice = "torch",
                 precision: str | None = None):
        self.loaded, self.device = loaded, device
        self.model, self.vocab, self.config = loaded.model, loaded.vocab, loaded.config
        onnx = start(loaded, choose_backend(backend, device, precision))  # None: torch
        self.backend = "onnx" if onnx is not None else "torch"
        self.precision = onnx.precision if onnx is not None else "fp32"
        if device.type == "cpu" and onnx is None:
            self.model.encoder.optimize_for_inference()
        self._pipeline = Pipeline(loaded, device, onnx)

    @property
    def pipeline(self) -> Pipeline:
        """The internal stages, for front ends that batch requests themselves (``core.pipeline``)."""
        return self._pipeline

    @property
    def info(self) -> dict[str, Any]:
        return {"source": self.loaded.source, "path": str(self.loaded.path), "backbone": self.config.backbone,
                "encoder_output": self.config.encoder_output, "vocab_size": len(self.vocab),
                "device": str(self.device), "backend": self.backend, "precision": self.precision}

    @property
    def class_names(self) -> list[str] | None:
        """ImageNet class names, for models whose encoder emits class probabilities."""
        return self._pipeline.class_names

    @overload
    def __call__(self, images: ImageSource, options: DecodeOptions | None = None, *, errors: Errors = "raise",
                 name: str | None = None, **settings: Any) -> CaptionResult: ...

    @overload
    def __call__(self, images: list[ImageSource] | tuple[ImageSource, ...], options: DecodeOptions | None = None, *,
                 errors: Errors = "raise", names: Sequence[str | None] | None = None, batch_size: int = BATCH_SIZE,
                 progress: Callable[[int, int], None] | None = None, **settings: Any) -> list[CaptionResult]: ...

    def __call__(self, images, options=None, *, errors="raise", name=None, names=None, batch_size=BATCH_SIZE,
                 progress=None, **settings):
        """Caption one image (one result back) or a list or tuple of them (a list back, in order,
        ``batch_size`` images per forward pass).

        Settings are a ``DecodeOptions`` or its fields as keywords (``beam_size=1`` is greedy); bad
        settings raise ``ValueError`` before any image is read. ``errors="raise"``: ``ImageError`` for an
        unusable image (for a list, naming the first); ``errors="return"``: such an image gets a result
        with ``error`` set, and the others are captioned. ``name`` / ``names`` label the results
        (``CaptionResult.image``; default: the paths given). ``progress(done, total)`` runs after each pass.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        options = _options(options, settings)
        if isinstance(images, (list, tuple)):
            return self._pipeline.caption_each(images, options, names=names, batch_size=batch_size,
                                               progress=progress, raise_errors=errors == "raise")
        if names is not None:
            raise TypeError("names labels a list of images; for one image, use name")
        [result] = self._pipeline.caption_each([images], options, names=None if name is None else [name],
                                               progress=progress, raise_errors=errors == "raise")
        return result

    def with_forward(self, wrap: Callable[[Forward], Forward]) -> Captioner:
        """This captioner, sharing its model, with every forward pass run inside ``wrap``
        (``Pipeline.with_forward``; e.g. ``spaces.GPU`` on ZeroGPU hardware)."""
        wrapped = copy.copy(self)
        wrapped._pipeline = self._pipeline.with_forward(wrap)
        return wrapped

    def score(self, images: ImageSource | Sequence[ImageSource], caption: str
              ) -> list[WordScore] | list[list[WordScore]]:
        """Each word of ``caption`` (and ``<end>``) with its probability, per image (``explain.scoring``)."""
        return scoring.score(self, images, caption)

    def explain(self, image: ImageSource, caption: str | None = None, *, beam_size: int = 3,
                max_length: int | None = None, heatmap_side: int | None = DEFAULT_HEATMAP_SIDE) -> Explanation:
        """Per-word Grad-CAM heatmaps of ``caption`` or of the model's own caption, at most
        ``heatmap_side`` pixels on the longer side (None: the decoded image's size) (``explain.gradcam``)."""
        return gradcam.explain(self, image, caption, beam_size=beam_size, max_length=max_length,
                               heatmap_side=heatmap_side)

    def caption(self, images: ImageSource | Sequence[ImageSource], options: DecodeOptions | None = None,
                **settings: Any) -> CaptionResult | list[CaptionResult]:
        """Deprecated: call the captioner, ``captioner(images, ...)``."""
        warnings.warn("Captioner.caption is deprecated: call the captioner, captioner(images, ...)",
                      DeprecationWarning, stacklevel=2)
        return self(images, options, **settings)

    def caption_many(self, sources: Sequence[ImageSource], options: DecodeOptions | None = None, *,
                     names: Sequence[str] | None = None, batch_size: int = BATCH_SIZE,
                     progress: Callable[[int, int], None] | None = None) -> list[CaptionResult]:
        """Deprecated: ``captioner(sources, errors="return", ...)``."""
        warnings.warn('Captioner.caption_many is deprecated: call captioner(sources, errors="return", ...)',
                      DeprecationWarning, stacklevel=2)
        return self(list(sources), options, errors="return", names=names, batch_size=batch_size, progress=progress)


def _options(options: DecodeOptions | None, settings: dict[str, Any]) -> DecodeOptions:
    if options is not None and settings:
        raise TypeError("pass either a DecodeOptions or its fields as keywords, not both")
    return options if options is not None else DecodeOptions(**settings)


_cache: dict[tuple[str, str, str, str], Captioner] = {}
_cache_lock = threading.Lock()


def load_captioner(source: str | os.PathLike | None = None, device: str | torch.device | None = None,
                   backend: str | BackendChoice | None = None, precision: str | None = None, *,
                   cache: bool = True) -> Captioner:
    """The captioner for ``source`` (a directory, ``owner/name[@rev]``, or None for ``$CAPTIONER_MODEL``,
    read now, else the bundled model) on ``device`` with ``backend`` (``auto``, ``torch`` or ``onnx``, or
    a ``BackendChoice``; None: ``$CAPTIONER_BACKEND``, else ``auto``) and the onnx backend's encoder in
    ``precision`` (``auto``, ``fp32`` or ``int8``; None: the choice's, else ``$CAPTIONER_PRECISION``,
    else ``auto``: int8 when the model's int8 encoder passed its check).

    Loaded once and cached, keyed by where the model is (a directory's resolved path, a Hub id with its
    revision), the device, the backend and the precision; ``cache=False`` loads a fresh one and keeps it out
    of the cache
    (e.g. after the model's files changed). A Hub model loaded for the onnx backend brings its
    repository's ONNX export (``onnx/``) when it has one."""
    device = select_device(device)
    choice = choose_backend(backend, device, precision)
    where = locate(source)
    if not cache:
        return _load(where, device, choice)
    with _cache_lock:
        for key in ((where.key, str(device), choice.asked, choice.precision),
                    (where.key, str(device), choice.first, choice.precision)):
            if key in _cache:  # "auto" shares the captioner of the backend it chose
                return _cache[key]
        captioner = _load(where, device, choice)
        _cache[(where.key, str(device), choice.asked, choice.precision)] = captioner
        _cache.setdefault((where.key, str(device), captioner.backend, choice.precision), captioner)  # auto fell back
        return captioner


def _load(where, device: torch.device, choice: BackendChoice) -> Captioner:
    onnx = choice.first == "onnx"  # ONNX Runtime runs the backbone from its graph: torch's is built if needed
    loaded = load_model(where, device, defer_backbone=onnx, optional_files=SHIPPED_FILES if onnx else ())
    return Captioner(loaded, device, choice)
