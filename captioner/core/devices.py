"""Which device to run on: the one asked for, else ``$CAPTIONER_DEVICE``, else cuda, mps, cpu."""

from __future__ import annotations

import os

import torch

from captioner.core.errors import CaptionerError


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$CAPTIONER_DEVICE``, else cuda, then mps, then cpu.

    Raises ``CaptionerError`` for a device name torch does not know or a device that is not present.
    """
    asked = device or os.environ.get("CAPTIONER_DEVICE") or None
    if asked is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(asked)
    except (RuntimeError, TypeError) as error:
        raise CaptionerError(f"unknown device {str(asked)!r}: use cpu, cuda, cuda:N or mps ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError(f"device {str(asked)!r} was asked for, but CUDA is not available on this machine")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise CaptionerError(f"device {str(asked)!r} was asked for, but MPS is not available on this machine")
    return chosen
