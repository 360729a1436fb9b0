"""Which backend runs a model: torch, or ONNX Runtime on the CPU (``onnx_runtime``), and in which precision.

``requested_backend`` reads the choice (an argument, else ``$CAPTIONER_BACKEND``, else ``auto``) and
``resolve_backend`` says what it means on a device; ``requested_precision`` reads the encoder's
precision the same way (``$CAPTIONER_PRECISION``); ``start`` starts the ONNX Runtime backend when
the choice resolves to it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from captioner.core.backends.onnx_export import BackendUnavailable, ExporterMissing
from captioner.core.backends.onnx_runtime import INSTALL_HINT, OnnxBackend
from captioner.core.errors import CaptionerError
from captioner.core.options import BACKENDS, PRECISIONS


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
    """Whether onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, device: torch.device, precision: str | None = None) -> str:
    """The backend to try first for a model on ``device``: ``"torch"`` or ``"onnx"``. ``auto``: ONNX Runtime
    on CPU when onnxruntime is installed, else torch (always torch on CUDA and MPS); ``start`` may still
    fall back to torch. Raises ``BackendUnavailable`` when ``onnx`` is asked for and cannot run, and when
    ``precision`` is ``int8`` (which only the onnx backend runs) and the backend is not onnx."""
    name = requested_backend(backend)
    if requested_precision(precision) == "int8":
        if name == "torch":
            raise BackendUnavailable("--precision int8 runs on the onnx backend: use --backend onnx or auto")
        name = "onnx"
    if name == "auto":
        return "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"
    if name == "onnx":
        if device.type != "cpu":
            raise BackendUnavailable(f"the onnx backend (and --precision int8) runs on the CPU, not {device}: "
                                     "use --device cpu or --backend torch")
        if not onnxruntime_available():
            raise BackendUnavailable(INSTALL_HINT)
    return name


def start(loaded: Any, backend: str | None, device: torch.device, precision: str | None = None
          ) -> OnnxBackend | None:
    """The ONNX Runtime backend for ``loaded`` in ``precision`` when ``backend`` resolves to it, else
    None (torch).

    Under ``auto``: a graph that has to be exported while the onnx package is missing means torch
    (quietly: a shipped or cached export runs on onnxruntime alone, an export needs onnx too); any
    other failure to export or load a graph means torch with a warning. When ``onnx`` (or ``int8``)
    was asked for, the error is raised."""
    precision = requested_precision(precision)
    if resolve_backend(backend, device, precision) != "onnx":
        return None
    if requested_backend(backend) == "onnx" or precision == "int8":
        return OnnxBackend(loaded, precision=precision)
    try:
        return OnnxBackend(loaded, precision=precision)
    except ExporterMissing:
        return None
    except Exception as error:  # noqa: BLE001 - the exporter and onnxruntime raise many types
        warnings.warn(f"the ONNX Runtime backend could not start ({type(error).__name__}: {error}); "
                      "using torch", stacklevel=3)
        return None
