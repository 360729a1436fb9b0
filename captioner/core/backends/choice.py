"""Which backend runs a model: torch, or ONNX Runtime on the CPU (``onnx_runtime``), and in which precision.

``choose_backend`` reads the choice once (an argument, else ``$CAPTIONER_BACKEND``, else ``auto``; the
encoder's precision likewise from ``$CAPTIONER_PRECISION``), checks it, and says what it means on a
device: a ``BackendChoice`` that front ends pass down (``load_captioner(backend=choice)``) instead of
the strings. ``start`` starts the ONNX Runtime backend when the choice resolves to it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from captioner.core.backends.onnx_export import BackendUnavailable, ExporterMissing
from captioner.core.backends.onnx_runtime import INSTALL_HINT, OnnxBackend
from captioner.core.errors import CaptionerError
from captioner.core.extras import installed
from captioner.core.options import BACKENDS, PRECISIONS


@dataclass(frozen=True)
class BackendChoice:
    """A backend request, read and checked once: ``asked`` (``auto``, ``torch`` or ``onnx``; ``int8``
    asks for onnx) and
    ``first``, what runs first on ``device`` (``torch`` or ``onnx``; under ``auto``, ``start`` may
    still fall back to torch); ``precision``, the onnx backend's encoder arithmetic asked for
    (``auto``, ``fp32`` or ``int8``: ``onnx_runtime.OnnxBackend``)."""

    asked: str
    first: str
    device: str  # the device type the choice was made for (cpu, cuda, mps)
    precision: str = "auto"


def requested_backend(backend: str | None = None) -> str:
    """``backend``, else ``$CAPTIONER_BACKEND``, else ``"auto"``; raises ``CaptionerError`` for an unknown name."""
    name = (backend or os.environ.get("CAPTIONER_BACKEND") or "auto").strip().lower()
    if name not in BACKENDS:
        raise CaptionerError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


def requested_precision(precision: str | None = None) -> str:
    """``precision``, else ``$CAPTIONER_PRECISION``, else ``"auto"``; raises ``CaptionerError`` for an unknown name."""
    name = (precision or os.environ.get("CAPTIONER_PRECISION") or "auto").strip().lower()
    if name not in PRECISIONS:
        raise CaptionerError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return name


def onnxruntime_available() -> bool:
    """Whether onnxruntime is installed."""
    return installed("onnxruntime")


def choose_backend(backend: str | BackendChoice | None, device: torch.device,
                   precision: str | None = None) -> BackendChoice:
    """What ``backend`` and ``precision`` mean on ``device``. ``auto``: ONNX Runtime on CPU when
    onnxruntime is installed, else torch (always torch on CUDA and MPS); ``int8`` runs only on the onnx
    backend, so it makes ``auto`` mean onnx. A ``BackendChoice`` made for this device is returned as it
    is (with ``precision`` when one is given). Raises ``CaptionerError`` for an unknown name,
    ``BackendUnavailable`` when ``onnx`` or ``int8`` is asked for and cannot run."""
    if isinstance(backend, BackendChoice):
        if backend.device == device.type and precision is None:
            return backend
        backend, precision = backend.asked, precision or backend.precision
    name, precision = requested_backend(backend), requested_precision(precision)
    if precision == "int8":
        if name == "torch":
            raise BackendUnavailable("--precision int8 runs on the onnx backend: use --backend onnx or auto")
        name = "onnx"
    if name == "auto":
        first = "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"
        return BackendChoice(name, first, device.type, precision)
    if name == "onnx":
        if device.type != "cpu":
            raise BackendUnavailable(f"--precision int8 runs on the CPU (the onnx backend), not {device}: use "
                                     "--device cpu or --precision auto" if precision == "int8" else
                                     f"the onnx backend runs on the CPU, not {device}: use --device cpu "
                                     "or --backend torch")
        if not onnxruntime_available():
            raise BackendUnavailable(INSTALL_HINT)
    return BackendChoice(name, name, device.type, precision)


def resolve_backend(backend: str | BackendChoice | None, device: torch.device, precision: str | None = None) -> str:
    """The backend tried first for a model on ``device``: ``"torch"`` or ``"onnx"`` (``choose_backend``)."""
    return choose_backend(backend, device, precision).first


def start(loaded: Any, choice: BackendChoice) -> OnnxBackend | None:
    """The ONNX Runtime backend for ``loaded`` when ``choice`` resolves to it, else None (torch).

    Under ``auto``: a graph that has to be exported while the onnx package is missing means torch
    (quietly: a shipped or cached export runs on onnxruntime alone, an export needs onnx too); any
    other failure to export or load a graph means torch with a warning. When ``onnx`` was asked
    for (or ``int8``), the error is raised."""
    if choice.first != "onnx":
        return None
    if choice.asked == "onnx" or choice.precision == "int8":
        return OnnxBackend(loaded, precision=choice.precision)
    try:
        return OnnxBackend(loaded, precision=choice.precision)
    except ExporterMissing:
        return None
    except Exception as error:  # noqa: BLE001 - the exporter and onnxruntime raise many types
        warnings.warn(f"the ONNX Runtime backend could not start ({type(error).__name__}: {error}); "
                      "using torch", stacklevel=3)
        return None
