"""ONNX graphs of a model: exported from its torch modules, and shipped in its repository.

``export_backbone`` and ``export_decoder_step`` turn a loaded model's backbone and one decoder step
into ONNX graphs (``torch.onnx.export``, opset 17, dynamic batch), recording in their metadata the
SHA-256 of the weights they came from. ``export_to_repo`` writes both into a model repository's
``onnx/`` folder (the layout Hugging Face Optimum uses: ``onnx/encoder_model.onnx``, and
``onnx/decoder_step.onnx``), and ``verify_shipped`` / ``mismatch`` check that a shipped graph belongs
to a model's weights and fits its inputs. ``onnx_backend`` runs the graphs.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.errors import CaptionerError, ModelSourceError
from captioner.core.files import write_all_atomic
from captioner.core.model.config import ModelConfig

OPSET = 17
EXPORT_VERSION = 1  # bump when what export() writes changes: old cache entries are then left unused
SHIPPED_EXPORT = Path("onnx") / "encoder_model.onnx"  # the backbone, where Optimum puts an encoder
SHIPPED_STEP = Path("onnx") / "decoder_step.onnx"
SHIPPED_INT8 = Path("onnx") / "encoder_model_int8.onnx"  # the backbone in int8 (``int8``), beside the fp32 one
SHIPPED_GRAPHS = (SHIPPED_EXPORT, SHIPPED_STEP, SHIPPED_INT8)
SHIPPED_FILES = tuple(graph.as_posix() for graph in SHIPPED_GRAPHS)  # a repository's export, as repo paths
INPUT_NAME, OUTPUT_NAME = "pixels", "features"
EXPORTER_HINT = "exporting to ONNX needs the onnx package: pip install onnx (or pip install 'captioner[onnx]')"


class BackendUnavailable(CaptionerError):
    """The backend asked for cannot run here (a package is missing, or the device does not fit)."""


class ExporterMissing(BackendUnavailable):
    """A graph has to be exported (it is neither shipped nor cached) and the onnx package is not installed."""


class ShippedExportError(CaptionerError):
    """A repository's ``onnx/`` export that does not belong to its weights, or is not a usable graph."""


def exporter_available() -> bool:
    """Whether the onnx package (what ``export`` needs) can be found."""
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def weights_digest(model_dir: Path, config: ModelConfig) -> str:
    """The SHA-256 of ``model.safetensors``: the one config.json records (``load_model`` has already
    checked the file against it), else computed from the file."""
    recorded = config.extra.get("weights_sha256")
    if isinstance(recorded, str) and len(recorded) == 64:
        return recorded
    from captioner.core.files import file_sha256

    return file_sha256(model_dir / "model.safetensors")


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
    return with_metadata(buffer.getvalue(), metadata) if metadata else buffer.getvalue()


def with_metadata(graph: bytes, metadata: dict[str, str]) -> bytes:
    """The graph ``graph`` (bytes) with ``metadata`` as its metadata properties, replacing any it had."""
    try:
        import onnx
    except ImportError:
        raise ExporterMissing(EXPORTER_HINT) from None
    model = onnx.load_model_from_string(graph)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


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


def expected_metadata(graph: Path, weights_sha256: str, config: ModelConfig) -> dict[str, str]:
    """What the metadata of the repository graph ``graph`` must record: ``shipped_metadata``, and for
    the int8 encoder its precision too."""
    return {**shipped_metadata(weights_sha256, config), **({"precision": "int8"} if graph == SHIPPED_INT8 else {})}


Interface = tuple[list[str], list[str], dict[str, list[Any]]]  # inputs, outputs, each input's dims (None: dynamic)


def graph_interface(graph: Path, loaded: Any) -> Interface:
    """The inputs, outputs and input dimensions that the shipped graph ``graph`` (one of
    ``SHIPPED_GRAPHS``) must have to run ``loaded``."""
    if graph in (SHIPPED_EXPORT, SHIPPED_INT8):
        size = loaded.config.image_size
        return [INPUT_NAME], [OUTPUT_NAME], {INPUT_NAME: [None, 3, size, size]}
    lstm = loaded.model.decoder.lstm
    state = [lstm.num_layers, None, lstm.hidden_size]
    return list(STEP_NAMES[0]), list(STEP_NAMES[1]), {"inputs": [None, lstm.input_size], "hidden": state,
                                                      "cell": state}


GraphInfo = tuple[dict[str, str], list[str], list[str], dict[str, list[Any]]]  # metadata, inputs, outputs, dims


def session_info(session: Any) -> GraphInfo:
    """A loaded graph's metadata and interface, from its onnxruntime session."""
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
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable(f"checking {path} needs onnx or onnxruntime: pip install 'captioner[onnx]' "
                                 f"(or remove the onnx/ folder)") from None
    return session_info(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def mismatch(info: GraphInfo, expected: dict[str, str], interface: Interface) -> str | None:
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
    weights = weights_digest(loaded.path, loaded.config)
    found = []
    for graph in SHIPPED_GRAPHS:
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
        problem = mismatch(info, expected_metadata(graph, weights, loaded.config), graph_interface(graph, loaded))
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
    cannot be written. ``int8.export_int8_to_repo`` writes the int8 encoder with them."""
    _, _, graphs = repo_graphs(model_dir)
    return write_export(model_dir, graphs)


def repo_graphs(model_dir: str | os.PathLike) -> tuple[Any, dict[str, str], dict[Path, bytes]]:
    """(the loaded model, the metadata its graphs record, {path in ``model_dir``: graph}) for its fp32
    export, made in memory; raises as ``export_to_repo`` does, before any export work."""
    from captioner.core.repository.storage import load_model

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelSourceError(f"no model directory {str(model_dir)!r}")
    folder = model_dir / SHIPPED_EXPORT.parent
    if folder.exists() and not folder.is_dir():
        raise CaptionerError(f"cannot write the ONNX export into {folder}: it is a file, not a folder")
    loaded = load_model(model_dir, "cpu")
    metadata = {**shipped_metadata(weights_digest(loaded.path, loaded.config), loaded.config),
                "exporter": f"captioner (torch {torch.__version__})"}
    return loaded, metadata, {
        model_dir / SHIPPED_EXPORT: export_backbone(loaded.model.encoder.backbone, loaded.config, metadata),
        model_dir / SHIPPED_STEP: export_decoder_step(loaded.model.decoder, metadata)}


def write_export(model_dir: str | os.PathLike, files: dict[Path, bytes]) -> list[Path]:
    """Write ``files`` (the export's graphs, and any file beside them) whole or not at all; returns their
    paths. Raises ``CaptionerError`` naming the operating system's reason when they cannot be written,
    and leaves no ``onnx/`` folder behind that was not there before."""
    folder = Path(model_dir) / SHIPPED_EXPORT.parent
    existed = folder.is_dir()
    try:
        write_all_atomic(files)
    except OSError as error:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise CaptionerError(f"cannot write the ONNX export into {folder}: {os_reason(error)}") from None
    return list(files)


def os_reason(error: OSError) -> str:
    """What went wrong, in the operating system's words."""
    return error.strerror or str(error)
