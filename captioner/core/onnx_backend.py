"""The ONNX Runtime backend: the model's backbone as an ONNX graph, run on CPU by onnxruntime.

Only the backbone (the CNN: most of a caption's time on a CPU) runs in ONNX Runtime; the projection,
decoding and results stay in torch (``inference.caption_features``): one LSTM step is too small for
an ONNX Runtime call to beat torch's (``benchmarks/onnx_decoder.py`` measures it).

Where the graph comes from, in order:

1. ``onnx/encoder_model.onnx`` in the model repository (the ``onnx/`` folder Hugging Face Optimum
   writes; ``export_to_repo`` makes it), used only when the SHA-256 of the weights it was exported
   from (recorded in its metadata) is the ``model.safetensors`` file's; otherwise it is refused with
   a warning and not used.
2. The export cache (``$CAPTIONER_CACHE/onnx``, else ``$XDG_CACHE_HOME/captioner/onnx``, else
   ``~/.cache/captioner/onnx``): one file per weights hash, export settings and torch/onnxruntime
   versions, named with the SHA-256 of its own bytes, which is checked on every load: a damaged
   file is rebuilt, never trusted.
3. A fresh export of the loaded weights (``torch.onnx.export``, opset 17, dynamic batch; about a
   second for EfficientNet-Lite0), written to the cache atomically.

Threads: one ``InferenceSession`` per loaded model, shared by every thread (its ``run`` is
thread-safe); it uses as many intra-op threads as torch (``torch.get_num_threads()`` when the
model is loaded: set ``OMP_NUM_THREADS`` or call ``torch.set_num_threads`` first).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from captioner.core.config import ModelConfig
from captioner.core.errors import CaptionerError

BACKENDS = ("auto", "torch", "onnx")
OPSET = 17
EXPORT_VERSION = 1  # bump when what export() writes changes: old cache entries are then left unused
SHIPPED_EXPORT = Path("onnx") / "encoder_model.onnx"
INPUT_NAME, OUTPUT_NAME = "pixels", "features"
INSTALL_HINT = "the onnx backend needs onnxruntime: pip install onnxruntime onnx (or pip install 'captioner[onnx]')"


class BackendUnavailable(CaptionerError):
    """The backend asked for cannot run here (a package is missing, or the device does not fit)."""


def requested_backend(backend: str | None = None) -> str:
    """``backend``, else ``$CAPTIONER_BACKEND``, else ``"auto"``; raises ``CaptionerError`` for an unknown name."""
    name = (backend or os.environ.get("CAPTIONER_BACKEND") or "auto").strip().lower()
    if name not in BACKENDS:
        raise CaptionerError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``"torch"`` or ``"onnx"`` for a model on ``device``. ``auto``: ONNX Runtime on CPU when onnxruntime
    (and onnx) are installed, else torch (always torch on CUDA and MPS). Raises ``BackendUnavailable`` when
    ``onnx`` is asked for and cannot run."""
    name = requested_backend(backend)
    if name == "auto":  # onnx (the exporter) is needed too, unless the graph is shipped or cached
        usable = onnxruntime_available() and importlib.util.find_spec("onnx") is not None
        return "onnx" if device.type == "cpu" and usable else "torch"
    if name == "onnx":
        if device.type != "cpu":
            raise BackendUnavailable(f"the onnx backend runs on the CPU, not {device}: use --device cpu "
                                     "or --backend torch")
        if not onnxruntime_available():
            raise BackendUnavailable(INSTALL_HINT)
    return name


def cache_dir() -> Path:
    """Where exports are cached: ``$CAPTIONER_CACHE/onnx``, else ``$XDG_CACHE_HOME/captioner/onnx``,
    else ``~/.cache/captioner/onnx``."""
    base = os.environ.get("CAPTIONER_CACHE")
    if base:
        return Path(base) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "captioner" / "onnx"


def weights_digest(model_dir: Path, config: ModelConfig) -> str:
    """The SHA-256 of ``model.safetensors``: the one config.json records (``load_model`` has already
    checked the file against it), else computed from the file."""
    recorded = config.extra.get("weights_sha256")
    if isinstance(recorded, str) and len(recorded) == 64:
        return recorded
    from captioner.core.repository import file_sha256

    return file_sha256(model_dir / "model.safetensors")


def export_settings(config: ModelConfig) -> dict[str, Any]:
    """Everything besides the weights that decides the exported graph (part of the cache key)."""
    import onnxruntime

    return {"export_version": EXPORT_VERSION, "opset": OPSET, "backbone": config.backbone,
            "encoder_output": config.encoder_output, "image_size": config.image_size,
            "dynamic_axes": "batch", "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def export(backbone: torch.nn.Module, config: ModelConfig, metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX graph of an eval-mode ``backbone`` (opset 17, dynamic batch) as bytes; ``metadata``
    goes into the model's metadata properties."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("exporting the backbone to ONNX needs the onnx package: pip install onnx "
                                 "(or pip install 'captioner[onnx]')") from None
    example = torch.zeros(1, 3, config.image_size, config.image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding and deprecation
        torch.onnx.export(backbone, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    if not metadata:
        return buffer.getvalue()
    graph = onnx.load_model_from_string(buffer.getvalue())
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    return graph.SerializeToString()


def export_to_repo(model_dir: str | os.PathLike) -> Path:
    """Write ``onnx/encoder_model.onnx`` into a model repository, recording the weights' SHA-256, so
    that the onnx backend uses it instead of exporting (for repositories shipped to many machines)."""
    from captioner.core.repository import load_model

    model_dir = Path(model_dir)
    loaded = load_model(model_dir, "cpu")
    digest = weights_digest(loaded.path, loaded.config)
    data = export(loaded.model.encoder.backbone, loaded.config,
                  {"weights_sha256": digest, "backbone": loaded.config.backbone,
                   "encoder_output": loaded.config.encoder_output, "exporter": f"captioner (torch {torch.__version__})"})
    _write_atomic(model_dir / SHIPPED_EXPORT, data)
    return model_dir / SHIPPED_EXPORT


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OnnxBackbone:
    """A loaded model's backbone in ONNX Runtime: ``backbone(pixels) -> features``, like the torch one.

    ``origin`` says where its graph came from: ``"shipped"`` (the repository's ``onnx/`` export),
    ``"cache"`` or ``"exported"`` (exported now and cached); ``path`` is that file.
    """

    def __init__(self, loaded: Any, cache: str | os.PathLike | None = None):
        import onnxruntime  # noqa: F401 - fail here, with the install hint, when it is missing

        self.config: ModelConfig = loaded.config
        self.weights_sha256 = weights_digest(loaded.path, self.config)
        self.session = self._shipped(loaded.path)
        if self.session is None:
            self.session = self._cached_or_exported(loaded.model.encoder.backbone, Path(cache or cache_dir()))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(features)

    def _shipped(self, model_dir: Path):
        path = model_dir / SHIPPED_EXPORT
        if not path.is_file():
            return None
        try:
            session = _session(path.read_bytes())
            recorded = session.get_modelmeta().custom_metadata_map
        except Exception as error:  # onnxruntime raises its own types for a malformed graph
            warnings.warn(f"{path} is not a usable ONNX file ({type(error).__name__}); exporting the "
                          "backbone from model.safetensors instead", stacklevel=3)
            return None
        expected = {"weights_sha256": self.weights_sha256, "backbone": self.config.backbone,
                    "encoder_output": self.config.encoder_output}
        wrong = [key for key, value in expected.items() if recorded.get(key) != value]
        if wrong:
            warnings.warn(f"refusing {path}: its recorded {', '.join(wrong)} do not match this model's "
                          f"(weights SHA-256 {self.weights_sha256[:12]}..., recorded "
                          f"{str(recorded.get('weights_sha256'))[:12]}...); exporting the backbone from "
                          "model.safetensors instead", stacklevel=3)
            return None
        self.origin, self.path = "shipped", path
        return session

    def _cached_or_exported(self, backbone: torch.nn.Module, cache: Path):
        settings = {"weights_sha256": self.weights_sha256, **export_settings(self.config)}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
        stem = f"{self.config.backbone}-{key}"
        for path in sorted(cache.glob(f"{stem}-*.onnx")):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == path.stem[len(stem) + 1:]:
                try:
                    session = _session(data)
                except Exception:  # intact bytes that onnxruntime refuses (should not happen): rebuild
                    session = None
                if session is not None:
                    self.origin, self.path = "cache", path
                    return session
            path.unlink(missing_ok=True)  # damaged: never trusted, rebuilt below
        data = export(backbone, self.config, {"weights_sha256": self.weights_sha256,
                                              "backbone": self.config.backbone,
                                              "encoder_output": self.config.encoder_output})
        self.path = cache / f"{stem}-{hashlib.sha256(data).hexdigest()}.onnx"
        try:
            _write_atomic(self.path, data)
        except OSError as error:  # a read-only cache still gives a working (uncached) backend
            warnings.warn(f"could not cache the ONNX export in {cache}: {error}", stacklevel=3)
        self.origin = "exported"
        return _session(data)
