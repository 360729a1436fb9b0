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
2. The export cache (``onnx`` in the captioner's cache folder, ``paths.cache_root``): one file per
   weights hash, export settings and torch/onnxruntime versions, named with the SHA-256 of its own
   bytes, which is checked on every load: a damaged file is rebuilt, never trusted.
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

from captioner.core.backends import quantize
from captioner.core.backends.agreement import Agreement
from captioner.core.backends.calibration import CalibrationError, photo_sets
from captioner.core.backends.int8 import make_int8
from captioner.core.backends.onnx_export import (
    EXPORT_VERSION,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    SHIPPED_EXPORT,
    SHIPPED_INT8,
    SHIPPED_STEP,
    ExporterMissing,
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
from captioner.core.backends.sessions import STEP_THREADS, open_session
from captioner.core.errors import CaptionerError
from captioner.core.files import write_atomic
from captioner.core.model.config import ModelConfig
from captioner.core.model.search import DecoderSteps
from captioner.core.paths import cache_dir

INSTALL_HINT = "the onnx backend needs onnxruntime: pip install onnxruntime onnx (or pip install 'captioner[onnx]')"


def export_cache_dir() -> Path:
    """Where exports are cached: ``onnx`` in the captioner's cache (``paths.cache_root``)."""
    return cache_dir("onnx")


def export_settings(config: ModelConfig) -> dict[str, Any]:
    """Everything besides the weights that decides the exported graphs (part of the cache key)."""
    import onnxruntime

    return {"export_version": EXPORT_VERSION, "opset": OPSET, "backbone": config.backbone,
            "encoder_output": config.encoder_output, "image_size": config.image_size,
            "dynamic_axes": "batch", "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


class OnnxBackend:
    """A loaded model's backbone and decoder step in ONNX Runtime.

    ``backend(pixels) -> features`` stands in for the torch backbone, and ``steps`` for the torch
    decoder step in the search (``search.DecoderSteps``; the decoding loop itself stays in torch).
    The torch model is left as it is, so gradients (explanations) flow through torch.

    ``precision`` (``fp32``, ``int8`` or ``auto``) chooses the backbone's arithmetic (see
    ``_int8_backbone``); ``self.precision`` is the one running, and ``precision_note`` says why int8
    is not, when it was asked for (None otherwise). ``origin`` says where the backbone's graph came
    from: ``"shipped"`` (the repository's ``onnx/encoder_model.onnx``, or ``onnx/encoder_model_int8.onnx``),
    ``"cache"`` or ``"exported"`` (made now and cached); ``path`` is that file; ``step_origin`` and
    ``step_path`` the same for the decoder step (shipped as ``onnx/decoder_step.onnx``).
    """

    def __init__(self, loaded: Any, cache: str | os.PathLike | None = None, precision: str = "fp32"):
        import onnxruntime  # noqa: F401 - fail here, with the install hint, when it is missing

        self.config: ModelConfig = loaded.config
        self.weights_sha256 = weights_digest(loaded.path, self.config)
        self.cache = Path(cache or export_cache_dir())
        self.settings = {"weights_sha256": self.weights_sha256, **export_settings(self.config)}
        self.metadata = shipped_metadata(self.weights_sha256, self.config)
        model = loaded.model
        self.precision, self.precision_note = "fp32", None
        backbone = None if precision == "fp32" else self._int8_backbone(loaded, precision)
        if backbone is not None:
            self.precision = "int8"
        else:
            backbone = self._fp32_backbone(loaded)
        self.session, self.origin, self.path = backbone
        shipped = _shipped(loaded, SHIPPED_STEP, self.metadata, "decoder step", STEP_THREADS, stacklevel=5)
        step_session, self.step_origin, self.step_path = shipped or _cached_session(
            self.cache, "decoder-step", self.settings, lambda: export_decoder_step(model.decoder, self.metadata),
            STEP_THREADS)
        self.steps = DecoderSteps(OnnxDecoderStep(step_session, model.decoder), model.decoder.embed)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(features)

    def _fp32_backbone(self, loaded: Any) -> Graph:
        return _shipped(loaded, SHIPPED_EXPORT, self.metadata, "backbone") or _cached_session(
            self.cache, self.config.backbone, self.settings,
            lambda: export_backbone(loaded.model.encoder.require_backbone(), self.config, self.metadata))

    def _int8_backbone(self, loaded: Any, precision: str) -> Graph | None:
        """The int8 backbone when it is to run, else None with ``precision_note`` saying why.

        The graph is the repository's ``onnx/encoder_model_int8.onnx`` when it belongs to these weights,
        else the cache's, made there from the fp32 graph when calibration photos are set
        (``$CAPTIONER_CALIBRATION``: ``calibration.photo_sets``). ``auto`` runs it only when its check
        passed, and says in one warning line when it failed; ``int8`` runs it whatever its check said,
        with a warning line when it did not pass. A model without an int8 graph runs fp32: quietly under
        ``auto``, with a warning under ``int8``."""
        expected = {**self.metadata, "precision": "int8"}
        found = _shipped(loaded, SHIPPED_INT8, expected, "int8 encoder")
        if found is None:
            try:
                found = self._cached_int8(loaded, expected)
            except (CalibrationError, ExporterMissing) as error:
                return self._refuse(f"no int8 encoder ({error}); the fp32 encoder is used", precision)
            except Exception as error:  # noqa: BLE001 - onnx and onnxruntime's quantisation raise many types
                return self._refuse(f"could not make the int8 encoder ({type(error).__name__}: {error}); "
                                    "the fp32 encoder is used", precision)
        if found is None:
            return self._refuse(NO_INT8, precision, quiet=precision == "auto")
        agreement = Agreement.from_metadata(session_info(found[0])[0]) or Agreement(0, 0, 0)
        if agreement.passed:
            return found
        if precision == "int8":
            warnings.warn(f"{found[2]}: {agreement.line(asked=True)}", stacklevel=6)
            return found
        return self._refuse(f"{found[2]}: {agreement.line()}", precision, quiet=agreement.verdict == "unchecked")

    def _cached_int8(self, loaded: Any, expected: dict[str, str]) -> Graph | None:
        """The cache's int8 graph for these weights: the entry there, unless calibration photos are set
        and it was made from others; else one made now from those photos; None without either."""
        photos = photo_sets()
        source = {"calibration_source": photos.source} if photos is not None else {}
        accept = (lambda session: session_info(session)[0].get("calibration_source") == photos.source) \
            if photos is not None else None
        settings = {**self.settings, "precision": "int8", "quantisation": [quantize.METHOD, quantize.PERCENTILE]}
        found = _cache_lookup(self.cache, f"{self.config.backbone}-int8", settings, accept=accept)
        if found is not None or photos is None:
            return found

        def make() -> bytes:
            fp32 = self._fp32_backbone(loaded)[2].read_bytes()
            return make_int8(loaded, fp32, photos, {**expected, **source})[0]
        return _cached_session(self.cache, f"{self.config.backbone}-int8", settings, make)

    def _refuse(self, note: str, precision: str, quiet: bool = False) -> None:
        self.precision_note = note
        if not quiet:
            warnings.warn(note, stacklevel=6)
        return None


NO_INT8 = ("this model has no int8 encoder: make one with `python -m captioner export-onnx DIR --int8 "
           "--calibration PHOTOS`, or set CAPTIONER_CALIBRATION to a folder of photos; the fp32 encoder is used")
Graph = tuple[Any, str, Path]  # session, origin ("shipped", "cache", "exported"), path


def _shipped(loaded: Any, graph: Path, expected: dict[str, str], what: str, threads: int | None = None,
             stacklevel: int = 6) -> Graph | None:
    """(session, "shipped", path) for the repository's ``graph`` when it is there and belongs to
    these weights; else None (with a warning when it is there but refused)."""
    path = loaded.path / graph
    if not path.is_file():
        return None
    instead = f"using the cached or a fresh export of the {what} instead"
    try:
        session = open_session(path, threads)
        info = session_info(session)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a malformed graph
        warnings.warn(f"{path} is not a usable ONNX file ({type(error).__name__}); {instead}", stacklevel=stacklevel)
        return None
    problem = mismatch(info, expected, graph_interface(graph, loaded))
    if problem:
        warnings.warn(f"refusing {path}: {problem}; {instead}", stacklevel=stacklevel)
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


def _cache_stem(name: str, settings: dict[str, Any]) -> str:
    key = hashlib.sha256(json.dumps({"graph": name, **settings}, sort_keys=True).encode()).hexdigest()[:32]
    return f"{name}-{key}"


def _cache_lookup(cache: Path, name: str, settings: dict[str, Any], threads: int | None = None,
                  accept: Callable[[Any], bool] | None = None) -> Graph | None:
    """(session, "cache", path) for the intact entry of graph ``name`` with these ``settings`` (and that
    ``accept`` takes, when given), else None. An entry's name ends with the SHA-256 of its bytes,
    checked on every load: a damaged entry (or one refused) is deleted, never used."""
    from captioner.core.files import file_sha256

    stem = _cache_stem(name, settings)
    for path in sorted(cache.glob(f"{stem}-*.onnx")):
        if file_sha256(path) == path.stem[len(stem) + 1:]:  # entries are replaced whole, never rewritten
            try:
                session = open_session(path, threads)
            except Exception:  # noqa: BLE001 - intact bytes that onnxruntime refuses: rebuilt below
                session = None
            if session is not None and (accept is None or accept(session)):
                return session, "cache", path
        path.unlink(missing_ok=True)
    return None


def _cached_session(cache: Path, name: str, settings: dict[str, Any], make: Callable[[], bytes],
                    threads: int | None = None) -> Graph:
    """(session, origin, path) for the graph ``make`` makes, from the cache when an intact entry for
    these ``settings`` is there (``_cache_lookup``), else made now and cached atomically."""
    found = _cache_lookup(cache, name, settings, threads)
    if found is not None:
        return found
    data = make()
    path = cache / f"{_cache_stem(name, settings)}-{hashlib.sha256(data).hexdigest()}.onnx"
    try:
        write_atomic(path, data)
    except OSError as error:  # a cache that cannot be written: the graph goes to a temporary file, used once
        try:
            with tempfile.TemporaryDirectory(prefix="captioner-onnx-") as folder:
                path = Path(folder) / path.name
                path.write_bytes(data)
                session = open_session(path, threads)
        except OSError as second:
            raise CaptionerError(f"could not write the ONNX export of {name}: not to the cache {cache} "
                                 f"({os_reason(error)}), nor to a temporary folder ({os_reason(second)})") from None
        warnings.warn(f"could not cache the ONNX export in {cache}: {error}", stacklevel=4)
        return session, "exported", path
    return open_session(path, threads), "exported", path
