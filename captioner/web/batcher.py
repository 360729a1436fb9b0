"""Serving one model to many users at once (the web app, an API).

``SharedCaptioner`` captions one image per call from many threads. Each caller decodes and
checks its own image, so a bad image fails only its own call; the model work of calls that
wait at the same time runs as one batched forward pass on a single worker thread, and
results are remembered by image content, so repeated images (example photos) answer at once.

``choose_model`` loads the model an app should show, falling back to the bundled model when
the one asked for cannot be loaded, and says what happened in words fit for a user.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.core.errors import CaptionerError
from captioner.core.images.decode import ImageSource
from captioner.core.inference import Captioner, load_captioner
from captioner.core.options import DecodeOptions
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.core.results import CaptionResult


@dataclass
class _Request:
    pixels: torch.Tensor
    options: DecodeOptions
    future: Future
    context: contextvars.Context = field(default_factory=contextvars.copy_context)  # the caller's (a Gradio request's)


_STOP = object()


class SharedCaptioner:
    """Thread-safe single-image captioning that batches concurrent calls into shared forward passes."""

    def __init__(self, captioner: Captioner, max_batch_size: int = 8, memo_size: int = 256,
                 run_forward: Callable[[Callable], Callable] | None = None):
        """``run_forward`` wraps the model call that every forward pass goes through (e.g. ``spaces.GPU``
        on ZeroGPU hardware, where CUDA exists only inside the wrapped call); its arguments (a pixel
        batch and the options) and results are plain data, so the wrapper may run it in another process."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.captioner, self.max_batch_size, self.memo_size = captioner, max_batch_size, memo_size
        self._model_call = run_forward(self._call_model) if run_forward is not None else self._call_model
        self.forward_passes = 0  # batched model calls so far
        self.batch_sizes: list[int] = []  # size of each forward pass, most recent last (up to 1000)
        self._memo: OrderedDict[tuple, CaptionResult] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Calls waiting for the model (not counting the pass running now)."""
        return self._queue.qsize()

    def caption(self, image: ImageSource, options: DecodeOptions = DecodeOptions()) -> CaptionResult:
        """Caption one image, decoded once here. Raises ``ImageError`` for an unusable image, ``ValueError``
        for bad options. Results are immutable: a remembered one is returned as is."""
        options = options.resolved(self.captioner.config.max_length)
        pixels = self.captioner.pipeline.prepare(image)
        key = (hashlib.blake2b(pixels.numpy().tobytes(), digest_size=16).digest(), options)
        with self._memo_lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        future: Future = Future()
        self._ensure_worker()
        self._queue.put(_Request(pixels, options, future))
        result = future.result()
        with self._memo_lock:
            self._memo[key] = result
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return result

    def warm(self, images: Iterable[ImageSource], options: DecodeOptions = DecodeOptions()) -> list[str | None]:
        """Caption ``images`` ahead of time so later calls with the same image and options answer
        from memory. Returns, per image, None or the reason it could not be captioned."""
        def attempt(image: ImageSource) -> str | None:
            try:
                self.caption(image, options)
            except (CaptionerError, ValueError) as error:
                return str(error)
            return None

        with ThreadPoolExecutor(self.max_batch_size) as pool:  # concurrent calls share forward passes
            return list(pool.map(attempt, images))

    def close(self) -> None:
        """Stop the worker thread (it also stops with the process)."""
        with self._worker_lock:
            if self._worker is not None:
                self._queue.put(_STOP)
                self._worker.join()
                self._worker = None

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="captioner-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            waiting = [first]
            while True:  # take everything that queued up while the last pass ran: no added latency
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in waiting
            waiting = [request for request in waiting if request is not _STOP]
            groups: dict[DecodeOptions, list[_Request]] = {}
            for request in waiting:
                groups.setdefault(request.options, []).append(request)
            for options, requests in groups.items():
                for start in range(0, len(requests), self.max_batch_size):
                    self._forward(options, requests[start:start + self.max_batch_size])
            if stop:
                return

    def _call_model(self, pixels: torch.Tensor, options: DecodeOptions) -> list[CaptionResult]:
        return self.captioner.pipeline.caption_batch(pixels, options)

    def _forward(self, options: DecodeOptions, requests: list[_Request]) -> None:
        try:
            pixels = torch.stack([request.pixels for request in requests])
            results = requests[0].context.run(self._model_call, pixels, options)  # e.g. ZeroGPU quota: first caller's
        except BaseException as error:  # noqa: BLE001 - handed to the callers, who re-raise it
            for request in requests:
                request.future.set_exception(error)
            return
        self.forward_passes += 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(requests)]
        for request, result in zip(requests, results):
            request.future.set_result(result)


@dataclass
class ModelChoice:
    """What an app should show: a captioner (or None) and, when something went wrong, why."""

    captioner: Captioner | None
    notice: str | None = None  # a fallback was used, or no model is available (Markdown-free text)


def choose_model(source: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 bundled: str | os.PathLike | None = BUNDLED_MODEL_DIR, backend: str | None = None,
                 precision: str | None = None) -> ModelChoice:
    """Load ``source``, else ``$CAPTIONER_MODEL``, else the ``bundled`` model directory; when the model
    asked for cannot be loaded, fall back to the bundled one if it exists. Never raises for a
    missing or broken model: the notice says what happened. ``backend``, ``precision``: see ``load_captioner``."""
    asked = source if source not in (None, "") else os.environ.get("CAPTIONER_MODEL") or None
    has_bundled = bundled is not None and (Path(bundled) / "config.json").is_file()
    if asked is None and not has_bundled:
        return ModelChoice(None, f"No model is available: the bundled model is missing ({bundled} holds no "
                                 "config.json). Start the app with --model DIR or owner/name, or set "
                                 "CAPTIONER_MODEL.")
    try:
        return ModelChoice(load_captioner(asked if asked is not None else bundled, device, backend, precision))
    except (CaptionerError, OSError) as error:
        reason = str(error)
    if asked is None or not has_bundled or Path(str(asked)).resolve() == Path(bundled).resolve():
        return ModelChoice(None, f"No model is available: {reason}")
    try:
        captioner = load_captioner(bundled, device, backend, precision)
    except (CaptionerError, OSError) as error:
        return ModelChoice(None, f"No model is available. The model {str(asked)!r} could not be loaded: "
                                 f"{reason}; the bundled model could not be loaded either: {error}")
    return ModelChoice(captioner, f"The model {str(asked)!r} could not be loaded ({reason}), "
                                  "so the bundled model is shown instead.")
