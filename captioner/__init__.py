"""captioner: a Show-and-Tell image captioner (pretrained CNN encoder + LSTM decoder).

    from captioner import load_captioner
    captioner = load_captioner()
    print(captioner("photo.jpg").caption)

``import captioner`` stays light: ``load_captioner`` and ``Captioner`` (which need torch) are imported
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from captioner.core.errors import (
    CaptionerError,
    DatasetError,
    ImageError,
    LegacyImportError,
    ModelFormatError,
    ModelSourceError,
)
from captioner.core.options import DecodeOptions
from captioner.core.results import CaptionResult

if TYPE_CHECKING:
    from captioner.core.inference import Captioner, load_captioner

__all__ = ["load_captioner", "Captioner", "CaptionResult", "DecodeOptions", "CaptionerError", "DatasetError",
           "ImageError", "LegacyImportError", "ModelFormatError", "ModelSourceError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("load_captioner", "Captioner"):
        from captioner.core import inference

        value = getattr(inference, name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
