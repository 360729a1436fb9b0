"""The ONNX Runtime backend: the model's backbone and decoder step as ONNX graphs, run on CPU by onnxruntime.

The backbone (the CNN) is most of a caption's time on a CPU; one decoder step (LSTM, output layer,
log-softmax) is small, but ONNX Runtime runs it in a fraction of torch's time,
which pays in beam search (``benchmarks/onnx_decoder.py`` measures both). The decoding loop, the
projection and the results stay in torch (``inference.caption_features``).

Where each graph comes from, in order:

1. The model repository's export: ``onnx/encoder_model.onnx`` (the backbone; the ``onnx/`` folder
   Hugging Face Optimum writes) and ``onnx/decoder_step.onnx``, written by ``onnx_export.export_to_repo``
   (``python -m captioner export-onnx DIR``). Each is used only when its metadata records this
   model's weights (the SHA-256 of ``model.safetensors``), backbone and encoder output, and its
   inputs and outputs are the ones this model needs; otherwise it is refused with a warning.
2. The export cache (``onnx`` in the captioner's cache folder, ``paths.cache_root``): one file per weights hash, export settings and torch/onnxruntime
   versions, named with the SHA-256 of its own bytes, which is checked on every load: a damaged
   file is rebuilt, never trusted.
3. A fresh export of the loaded weights (``torch.onnx.export``, opset 17, dynamic batch; about a
   second for EfficientNet-Lite0), written to the cache atomically. This needs the ``onnx`` package;
   with both graphs shipped (or cached), onnxruntime alone runs the model.

Threads: one ``InferenceSession`` per graph and loaded model, shared by every thread (its ``run`` is
thread-safe). The backbone's uses as many intra-op threads as torch (``torch.get_num_threads()`` when
the model is loaded: set ``OMP_NUM_THREADS`` or call ``torch.set_num_threads`` first); the decoder
step's runs on the calling thread (``STEP_THREADS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.backends.onnx_export import (
    EXPORT_VERSION,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    SHIPPED_EXPORT,
    SHIPPED_STEP,
    STEP_NAMES,
    export_backbone,
    export_decoder_step,
    graph_interface,
    mismatch,
    os_reason,
    session_info,
    shipped_metadata,
    weights_digest,
)
from captioner.core.errors import CaptionerError
from captioner.core.extras import install_hint
from captioner.core.files import write_atomic
from captioner.core.model.config import ModelConfig
from captioner.core.model.search import DecoderSteps
from captioner.core.paths import cache_dir

INSTALL_HINT = install_hint("onnx", "the onnx backend", ["onnxruntime"])


def export_cache_dir() -> Path:
    """Where exports are cached: ``onnx`` in the captioner's cache (``paths.cache_root``)."""
    return cache_dir("onnx")


def export_settings(config: ModelConfig) -> dict[str, Any]:
    """Everything besides the weights that decides the exported graphs (part of the cache key)."""
    import onnxruntime

    return {"export_version": EXPORT_VERSION, "opset": OPSET, "backbone": config.backbone,
            "encoder_output": config.encoder_output, "image_size": config.image_size,
            "dynamic_axes": "batch", "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


# The pool's threads spin between the operators of one run, but not after it: spinning on past a run
# takes the cores from the torch and Python work between runs (the decoding loop, the next image).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
# The decoder step runs on the calling thread alone: its operators are too small to share, and waking a
# pool for each of a caption's steps costs more than the step (with 2 threads a whole greedy caption of the
# bundled model takes 1.5x as long: benchmarks/onnx_threads.py).
STEP_THREADS = 1


def session_options(config: dict[str, str] | None = None, threads: int | None = None):
    """The ``SessionOptions`` every session here uses: all graph optimisations, sequential execution,
    ``threads`` intra-op threads (default: as many as torch uses now), and ``config`` entries (default
    ``SESSION_CONFIG``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    for key, value in (SESSION_CONFIG if config is None else config).items():
        options.add_session_config_entry(key, value)
    return options


def _session(graph: Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(graph), session_options(threads=threads), providers=["CPUExecutionProvider"])


class OnnxBackend:
    """A loaded model's backbone and decoder step in ONNX Runtime.

    ``backend(pixels) -> features`` stands in for the torch backbone, and ``steps`` for the torch
    decoder step in the search (``search.DecoderSteps``; the decoding loop itself stays in torch).
    The torch model is left as it is, so gradients (explanations) flow through torch. ``origin`` says where the backbone's graph came from:
    ``"shipped"`` (the repository's ``onnx/encoder_model.onnx``), ``"cache"`` or ``"exported"`` (exported
    now and cached); ``path`` is that file; ``step_origin`` and ``step_path`` the same for the decoder
    step (shipped as ``onnx/decoder_step.onnx``).
    """

    def __init__(self, loaded: Any, cache: str | os.PathLike | None = None):
        import onnxruntime  # noqa: F401 - fail here, with the install hint, when it is missing

        self.config: ModelConfig = loaded.config
        self.weights_sha256 = weights_digest(loaded.path, self.config)
        cache = Path(cache or export_cache_dir())
        settings = {"weights_sha256": self.weights_sha256, **export_settings(self.config)}
        metadata = shipped_metadata(self.weights_sha256, self.config)
        model = loaded.model
        shipped = self._shipped(loaded, SHIPPED_EXPORT, metadata, "backbone")
        self.session, self.origin, self.path = shipped or _cached_session(
            cache, self.config.backbone, settings,
            lambda: export_backbone(model.encoder.require_backbone(), self.config, metadata))
        shipped = self._shipped(loaded, SHIPPED_STEP, metadata, "decoder step", STEP_THREADS)
        step_session, self.step_origin, self.step_path = shipped or _cached_session(
            cache, "decoder-step", settings, lambda: export_decoder_step(model.decoder, metadata), STEP_THREADS)
        self.steps = DecoderSteps(OnnxDecoderStep(step_session, model.decoder), model.decoder.embed)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(features)

    @staticmethod
    def _shipped(loaded: Any, graph: Path, expected: dict[str, str], what: str, threads: int | None = None):
        """(session, "shipped", path) for the repository's ``graph`` when it is there and belongs to
        these weights; else None (with a warning when it is there but refused)."""
        path = loaded.path / graph
        if not path.is_file():
            return None
        instead = f"using the cached or a fresh export of the {what} instead"
        try:
            session = _session(path, threads)
            info = session_info(session)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a malformed graph
            warnings.warn(f"{path} is not a usable ONNX file ({type(error).__name__}); {instead}", stacklevel=5)
            return None
        problem = mismatch(info, expected, graph_interface(graph, loaded))
        if problem:
            warnings.warn(f"refusing {path}: {problem}; {instead}", stacklevel=5)
            return None
        return session, "shipped", path


class OnnxDecoderStep:
    """``Decoder.step(inputs, state)`` run by an ONNX Runtime session."""

    def __init__(self, session: Any, decoder: nn.Module):
        self.session = session
        self.layers, self.hidden_size = decoder.lstm.num_layers, decoder.lstm.hidden_size

    def __call__(self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            zeros = inputs.new_zeros(self.layers, inputs.size(0), self.hidden_size)
            state = (zeros, zeros)
        feeds = {name: tensor.float().contiguous().numpy()
                 for name, tensor in zip(STEP_NAMES[0], (inputs, *state))}
        log_probs, hidden, cell = self.session.run(None, feeds)
        return torch.from_numpy(log_probs), (torch.from_numpy(hidden), torch.from_numpy(cell))


def _cached_session(cache: Path, name: str, settings: dict[str, Any], make: Callable[[], bytes],
                    threads: int | None = None):
    """(session, origin, path) for the graph ``make`` exports, from the cache when an intact entry for
    these ``settings`` is there, else exported now and cached atomically. An entry's name ends with the
    SHA-256 of its bytes, checked on every load: a damaged entry is deleted and rebuilt, never used."""
    key = hashlib.sha256(json.dumps({"graph": name, **settings}, sort_keys=True).encode()).hexdigest()[:32]
    stem = f"{name}-{key}"
    from captioner.core.files import file_sha256

    for path in sorted(cache.glob(f"{stem}-*.onnx")):
        if file_sha256(path) == path.stem[len(stem) + 1:]:  # entries are replaced whole, never rewritten
            try:
                return _session(path, threads), "cache", path
            except Exception:  # noqa: BLE001 - intact bytes that onnxruntime refuses: rebuilt below
                pass
        path.unlink(missing_ok=True)
    data = make()
    path = cache / f"{stem}-{hashlib.sha256(data).hexdigest()}.onnx"
    try:
        write_atomic(path, data)
    except OSError as error:  # a cache that cannot be written: the graph goes to a temporary file, used once
        try:
            with tempfile.TemporaryDirectory(prefix="captioner-onnx-") as folder:
                path = Path(folder) / path.name
                path.write_bytes(data)
                session = _session(path, threads)
        except OSError as second:
            raise CaptionerError(f"could not write the ONNX export of {name}: not to the cache {cache} "
                                 f"({os_reason(error)}), nor to a temporary folder ({os_reason(second)})") from None
        warnings.warn(f"could not cache the ONNX export in {cache}: {error}", stacklevel=4)
        return session, "exported", path
    return _session(path, threads), "exported", path
