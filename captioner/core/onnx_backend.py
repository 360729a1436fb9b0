"""The ONNX Runtime backend: the model's backbone and decoder step as ONNX graphs, run on CPU by onnxruntime.

The backbone (the CNN) is most of a caption's time on a CPU; one decoder step (LSTM, output layer,
log-softmax) is small, but ONNX Runtime runs it in a fraction of torch's time,
which pays in beam search (``benchmarks/onnx_decoder.py`` measures both). The decoding loop, the
projection and the results stay in torch (``inference.caption_features``).

Where each graph comes from, in order:

1. The model repository's export: ``onnx/encoder_model.onnx`` (the backbone; the ``onnx/`` folder
   Hugging Face Optimum writes) and ``onnx/decoder_step.onnx``, written by ``export_to_repo``
   (``python -m captioner export-onnx DIR``). Each is used only when its metadata records this
   model's weights (the SHA-256 of ``model.safetensors``), backbone and encoder output, and its
   inputs and outputs are the ones this model needs; otherwise it is refused with a warning.
2. The export cache (``$CAPTIONER_CACHE/onnx``, else ``$XDG_CACHE_HOME/captioner/onnx``, else
   ``~/.cache/captioner/onnx``): one file per weights hash, export settings and torch/onnxruntime
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
import importlib.util
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.config import ModelConfig
from captioner.core.errors import CaptionerError, ModelSourceError

BACKENDS = ("auto", "torch", "onnx")
OPSET = 17
EXPORT_VERSION = 1  # bump when what export() writes changes: old cache entries are then left unused
SHIPPED_EXPORT = Path("onnx") / "encoder_model.onnx"  # the backbone, where Optimum puts an encoder
SHIPPED_STEP = Path("onnx") / "decoder_step.onnx"
SHIPPED_FILES = (SHIPPED_EXPORT.as_posix(), SHIPPED_STEP.as_posix())  # a repository's export, as repo paths
INPUT_NAME, OUTPUT_NAME = "pixels", "features"
INSTALL_HINT = "the onnx backend needs onnxruntime: pip install onnxruntime onnx (or pip install 'captioner[onnx]')"
EXPORTER_HINT = "exporting to ONNX needs the onnx package: pip install onnx (or pip install 'captioner[onnx]')"


class BackendUnavailable(CaptionerError):
    """The backend asked for cannot run here (a package is missing, or the device does not fit)."""


class ExporterMissing(BackendUnavailable):
    """A graph has to be exported (it is neither shipped nor cached) and the onnx package is not installed."""


class ShippedExportError(CaptionerError):
    """A repository's ``onnx/`` export that does not belong to its weights, or is not a usable graph."""


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


def exporter_available() -> bool:
    """Whether the onnx package (what ``export`` needs) can be found."""
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to try first for a model on ``device``: ``"torch"`` or ``"onnx"``. ``auto``: ONNX Runtime
    on CPU when onnxruntime is installed, else torch (always torch on CUDA and MPS); ``start`` may still
    fall back to torch. Raises ``BackendUnavailable`` when ``onnx`` is asked for and cannot run."""
    name = requested_backend(backend)
    if name == "auto":
        return "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"
    if name == "onnx":
        if device.type != "cpu":
            raise BackendUnavailable(f"the onnx backend runs on the CPU, not {device}: use --device cpu "
                                     "or --backend torch")
        if not onnxruntime_available():
            raise BackendUnavailable(INSTALL_HINT)
    return name


def start(loaded: Any, backend: str | None, device: torch.device) -> OnnxBackend | None:
    """The ONNX Runtime backend for ``loaded`` when ``backend`` resolves to it, else None (torch).

    Under ``auto``: a graph that has to be exported while the onnx package is missing means torch
    (quietly: a shipped or cached export runs on onnxruntime alone, an export needs onnx too); any
    other failure to export or load a graph means torch with a warning. When ``onnx`` was asked
    for, the error is raised."""
    if resolve_backend(backend, device) != "onnx":
        return None
    if requested_backend(backend) == "onnx":
        return OnnxBackend(loaded)
    try:
        return OnnxBackend(loaded)
    except ExporterMissing:
        return None
    except Exception as error:  # noqa: BLE001 - the exporter and onnxruntime raise many types
        warnings.warn(f"the ONNX Runtime backend could not start ({type(error).__name__}: {error}); "
                      "using torch", stacklevel=3)
        return None


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
    """Everything besides the weights that decides the exported graphs (part of the cache key)."""
    import onnxruntime

    return {"export_version": EXPORT_VERSION, "opset": OPSET, "backbone": config.backbone,
            "encoder_output": config.encoder_output, "image_size": config.image_size,
            "dynamic_axes": "batch", "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def export(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[list[str], list[str]],
           batch_axes: dict[str, int], metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX graph of an eval-mode ``module`` (opset 17; ``batch_axes`` name each input's and output's
    batch dimension, which stays dynamic) as bytes; ``metadata`` goes into its metadata properties."""
    try:
        import onnx
    except ImportError:
        raise ExporterMissing(EXPORTER_HINT) from None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding and deprecation
        torch.onnx.export(module, inputs, buffer, input_names=names[0], output_names=names[1], opset_version=OPSET,
                          dynamic_axes={name: {axis: "batch"} for name, axis in batch_axes.items()},
                          do_constant_folding=True, dynamo=False)
    if not metadata:
        return buffer.getvalue()
    graph = onnx.load_model_from_string(buffer.getvalue())
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    return graph.SerializeToString()


def export_backbone(backbone: nn.Module, config: ModelConfig, metadata: dict[str, str] | None = None) -> bytes:
    """The backbone: ``pixels`` (B, 3, S, S) -> ``features`` (B, D)."""
    example = torch.zeros(1, 3, config.image_size, config.image_size)
    return export(backbone, (example,), ([INPUT_NAME], [OUTPUT_NAME]), {INPUT_NAME: 0, OUTPUT_NAME: 0}, metadata)


class DecoderStep(nn.Module):
    """``Decoder.step`` as one graph: inputs (B, E), hidden and cell (L, B, H) -> log-probabilities (B, V),
    hidden, cell. The LSTM cell is written out (the arithmetic of ``torch.lstm_cell``, gates i, f, g, o)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor):
        hiddens, cells = [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.decoder.lstm.all_weights):
            gates = inputs @ w_ih.t() + b_ih + hidden[layer] @ w_hh.t() + b_hh
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * cell[layer] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hiddens.append(h)
            cells.append(c)
            inputs = h
        return torch.log_softmax(self.decoder.linear(inputs), dim=1), torch.stack(hiddens), torch.stack(cells)


STEP_NAMES = (["inputs", "hidden", "cell"], ["log_probs", "hidden_out", "cell_out"])


def export_decoder_step(decoder: nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """One decoder step (``DecoderStep``): inputs (B, E), hidden and cell (L, B, H) -> log-probabilities, state."""
    lstm = decoder.lstm
    state = torch.zeros(lstm.num_layers, 1, lstm.hidden_size)
    return export(DecoderStep(decoder).eval(), (torch.zeros(1, lstm.input_size), state, state), STEP_NAMES,
                  {"inputs": 0, "hidden": 1, "cell": 1, "log_probs": 0, "hidden_out": 1, "cell_out": 1}, metadata)


def shipped_metadata(weights_sha256: str, config: ModelConfig) -> dict[str, str]:
    """What a shipped graph's metadata must record to be used for a model: its weights, backbone and output."""
    return {"weights_sha256": weights_sha256, "backbone": config.backbone, "encoder_output": config.encoder_output}


Interface = tuple[list[str], list[str], dict[str, list[Any]]]  # inputs, outputs, each input's dims (None: dynamic)


def graph_interface(graph: Path, loaded: Any) -> Interface:
    """The inputs, outputs and input dimensions that the shipped graph ``graph`` (``SHIPPED_EXPORT`` or
    ``SHIPPED_STEP``) must have to run ``loaded``."""
    if graph == SHIPPED_EXPORT:
        size = loaded.config.image_size
        return [INPUT_NAME], [OUTPUT_NAME], {INPUT_NAME: [None, 3, size, size]}
    lstm = loaded.model.decoder.lstm
    state = [lstm.num_layers, None, lstm.hidden_size]
    return list(STEP_NAMES[0]), list(STEP_NAMES[1]), {"inputs": [None, lstm.input_size], "hidden": state,
                                                      "cell": state}


GraphInfo = tuple[dict[str, str], list[str], list[str], dict[str, list[Any]]]  # metadata, inputs, outputs, dims


def _session_info(session: Any) -> GraphInfo:
    inputs = session.get_inputs()
    return (dict(session.get_modelmeta().custom_metadata_map), [i.name for i in inputs],
            [o.name for o in session.get_outputs()],
            {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in inputs})


def _file_info(path: Path) -> GraphInfo:
    """A graph file's metadata and interface, read with onnx when installed, else with onnxruntime."""
    if exporter_available():
        import onnx

        model = onnx.load(str(path), load_external_data=False)

        def dims(value: Any) -> list[Any]:
            return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

        return ({prop.key: prop.value for prop in model.metadata_props}, [v.name for v in model.graph.input],
                [v.name for v in model.graph.output], {v.name: dims(v) for v in model.graph.input})
    if onnxruntime_available():
        return _session_info(_session(path))
    raise BackendUnavailable(f"checking {path} needs onnx or onnxruntime: pip install 'captioner[onnx]' "
                             f"(or remove the onnx/ folder)")


def _mismatch(info: GraphInfo, expected: dict[str, str], interface: Interface) -> str | None:
    """Why a shipped graph does not belong to the model (None: it does)."""
    recorded, inputs, outputs, dims = info
    wrong = [key for key, value in expected.items() if recorded.get(key) != value]
    if wrong:
        return (f"its recorded {', '.join(wrong)} do not match this model's (weights SHA-256 "
                f"{expected['weights_sha256'][:12]}..., recorded {str(recorded.get('weights_sha256'))[:12]}...)")
    if (inputs, outputs) != (interface[0], interface[1]):
        return f"it maps {inputs} to {outputs}, not {interface[0]} to {interface[1]}"
    for name, needed in interface[2].items():
        found = dims.get(name, [])
        if len(found) != len(needed) or any(n is not None and f != n for f, n in zip(found, needed)):
            return f"its input {name} has dimensions {found}, this model needs {needed}"
    return None


def verify_shipped(loaded: Any) -> list[Path]:
    """The graphs of ``loaded``'s repository export (``onnx/``) that are there, as paths inside the
    repository, after checking that each belongs to these weights; raises ``ShippedExportError`` for
    one that does not (``push_model`` publishes only an export that the onnx backend would use)."""
    expected = shipped_metadata(weights_digest(loaded.path, loaded.config), loaded.config)
    found = []
    for graph in (SHIPPED_EXPORT, SHIPPED_STEP):
        path = loaded.path / graph
        if not path.is_file():
            continue
        try:
            info = _file_info(path)
        except BackendUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - onnx and onnxruntime raise their own types
            raise ShippedExportError(f"{path} is not a usable ONNX file ({type(error).__name__}); export it again "
                                     f"with `python -m captioner export-onnx {loaded.path}`, or remove it") from None
        problem = _mismatch(info, expected, graph_interface(graph, loaded))
        if problem:
            raise ShippedExportError(f"{path} does not belong to this model: {problem}; export it again with "
                                     f"`python -m captioner export-onnx {loaded.path}`, or remove it")
        found.append(graph)
    return found


def export_to_repo(model_dir: str | os.PathLike) -> list[Path]:
    """Write the model's ONNX export into its repository: ``onnx/encoder_model.onnx`` (the backbone) and
    ``onnx/decoder_step.onnx``, each recording the weights' SHA-256, backbone and encoder output, so the
    onnx backend uses them instead of exporting (and runs with onnxruntime alone). Both are written
    under temporary names and renamed into place once both are complete. Returns their paths.
    Raises ``ModelSourceError`` when ``model_dir`` is not a directory, ``CaptionerError`` when it
    cannot be written."""
    from captioner.core.repository import load_model

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelSourceError(f"no model directory {str(model_dir)!r}")
    loaded = load_model(model_dir, "cpu")
    metadata = {**shipped_metadata(weights_digest(loaded.path, loaded.config), loaded.config),
                "exporter": f"captioner (torch {torch.__version__})"}
    graphs = {model_dir / SHIPPED_EXPORT: export_backbone(loaded.model.encoder.backbone, loaded.config, metadata),
              model_dir / SHIPPED_STEP: export_decoder_step(loaded.model.decoder, metadata)}
    folder = model_dir / SHIPPED_EXPORT.parent
    if folder.exists() and not folder.is_dir():
        raise CaptionerError(f"cannot write the ONNX export into {folder}: it is a file, not a folder")
    existed = folder.is_dir()
    try:
        _write_all_atomic(graphs)
    except OSError as error:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise CaptionerError(f"cannot write the ONNX export into {folder}: {_reason(error)}") from None
    return list(graphs)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _write_all_atomic(files: dict[Path, bytes]) -> None:
    """Write every file under a temporary name beside it, then rename them all into place."""
    temporaries: list[Path] = []
    try:
        for path, data in files.items():
            temporaries.append(_write_temporary(path, data))
        for temporary, path in zip(temporaries, files):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def _write_temporary(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _write_atomic(path: Path, data: bytes) -> None:
    _write_all_atomic({path: data})


# The pool's threads spin between the operators of one run, but not after it: spinning on past a run
# takes the cores from the torch and Python work between runs (the decoding loop, the next image).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
# The decoder step runs on the calling thread alone: its operators are too small to share, and waking a
# pool for each of a caption's steps cost more than the step (a whole greedy caption of the bundled model
# took 1.5x as long with 2 threads; benchmarks/onnx_threads.py).
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

    ``backend(pixels) -> features`` replaces the torch backbone. The decoder's ``step`` is replaced
    on ``loaded.model`` (the decoding loop itself stays in torch), except where autograd is on: there
    the torch step runs, so gradients still flow. ``origin`` says where the backbone's graph came from:
    ``"shipped"`` (the repository's ``onnx/encoder_model.onnx``), ``"cache"`` or ``"exported"`` (exported
    now and cached); ``path`` is that file; ``step_origin`` and ``step_path`` the same for the decoder
    step (shipped as ``onnx/decoder_step.onnx``).
    """

    def __init__(self, loaded: Any, cache: str | os.PathLike | None = None):
        import onnxruntime  # noqa: F401 - fail here, with the install hint, when it is missing

        self.config: ModelConfig = loaded.config
        self.weights_sha256 = weights_digest(loaded.path, self.config)
        cache = Path(cache or cache_dir())
        settings = {"weights_sha256": self.weights_sha256, **export_settings(self.config)}
        metadata = shipped_metadata(self.weights_sha256, self.config)
        model = loaded.model
        shipped = self._shipped(loaded, SHIPPED_EXPORT, metadata, "backbone")
        self.session, self.origin, self.path = shipped or _cached_session(
            cache, self.config.backbone, settings,
            lambda: export_backbone(model.encoder.backbone, self.config, metadata))
        shipped = self._shipped(loaded, SHIPPED_STEP, metadata, "decoder step", STEP_THREADS)
        step_session, self.step_origin, self.step_path = shipped or _cached_session(
            cache, "decoder-step", settings, lambda: export_decoder_step(model.decoder, metadata), STEP_THREADS)
        model.decoder.step = OnnxDecoderStep(step_session, model.decoder)

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
            info = _session_info(session)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a malformed graph
            warnings.warn(f"{path} is not a usable ONNX file ({type(error).__name__}); {instead}", stacklevel=5)
            return None
        problem = _mismatch(info, expected, graph_interface(graph, loaded))
        if problem:
            warnings.warn(f"refusing {path}: {problem}; {instead}", stacklevel=5)
            return None
        return session, "shipped", path


class OnnxDecoderStep:
    """``Decoder.step(inputs, state)`` run by an ONNX Runtime session (the torch step where autograd is on)."""

    def __init__(self, session: Any, decoder: nn.Module):
        self.session, self.decoder = session, decoder

    def __call__(self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if torch.is_grad_enabled() or inputs.device.type != "cpu":
            return type(self.decoder).step(self.decoder, inputs, state)
        if state is None:
            zeros = inputs.new_zeros(self.decoder.lstm.num_layers, inputs.size(0), self.decoder.lstm.hidden_size)
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
    from captioner.core.repository import file_sha256

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
        _write_atomic(path, data)
    except OSError as error:  # a cache that cannot be written: the graph goes to a temporary file, used once
        try:
            with tempfile.TemporaryDirectory(prefix="captioner-onnx-") as folder:
                path = Path(folder) / path.name
                path.write_bytes(data)
                session = _session(path, threads)
        except OSError as second:
            raise CaptionerError(f"could not write the ONNX export of {name}: not to the cache {cache} "
                                 f"({_reason(error)}), nor to a temporary folder ({_reason(second)})") from None
        warnings.warn(f"could not cache the ONNX export in {cache}: {error}", stacklevel=4)
        return session, "exported", path
    return _session(path, threads), "exported", path
