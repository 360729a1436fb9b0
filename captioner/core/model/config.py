"""``config.json``: what a model directory's weights mean.

Every field is checked for type and range before anything is allocated, so a hostile or
broken file (a vocabulary of 10^9 words, a negative size) is refused with a clear message.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.core.errors import ModelFormatError

ARCHITECTURE = "show-and-tell"
FORMAT_VERSION = 1
ENCODER_OUTPUTS = ("features", "class_probs", "class_log_probs")
MAX_CONFIG_BYTES = 1024 * 1024

_LIMITS = {  # inclusive ranges for the integer fields
    "embed_size": (1, 8192),
    "hidden_size": (1, 8192),
    "num_layers": (1, 8),
    "vocab_size": (5, 500_000),
    "max_length": (2, 200),
    "image_size": (16, 1024),
    "resize": (16, 2048),
}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str
    vocab_size: int
    encoder_output: str = "features"
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    max_length: int = 20
    image_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_mode: str = "shorter_side"  # or "squash": the whole image to image_size x image_size
    resample: str = "bilinear"  # the resize filter: bilinear, bicubic, lanczos or nearest
    architecture: str = ARCHITECTURE
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        from captioner.core.model.encoders import BACKBONES  # late import: encoders imports torch

        if self.architecture != ARCHITECTURE:
            raise ModelFormatError(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if self.format_version != FORMAT_VERSION:
            raise ModelFormatError(
                f"format_version {self.format_version!r} is not supported (this version reads {FORMAT_VERSION})")
        if self.backbone not in BACKBONES:
            raise ModelFormatError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")
        if self.encoder_output not in ENCODER_OUTPUTS:
            raise ModelFormatError(f"encoder_output must be one of {ENCODER_OUTPUTS}, got {self.encoder_output!r}")
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ModelFormatError(f"config.json: {name} must be an integer from {low} to {high}, got {value!r}")
        if self.resize < self.image_size:
            raise ModelFormatError(f"config.json: resize ({self.resize}) is smaller than image_size ({self.image_size})")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, (list, tuple)) or len(values) != 3
                    or not all(type(v) in (int, float) and -10 <= v <= 10 for v in values)):
                raise ModelFormatError(f"config.json: {name} must be three numbers, got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        from captioner.core.images.preprocess import RESAMPLE_FILTERS, RESIZE_MODES

        if self.resize_mode not in RESIZE_MODES:
            raise ModelFormatError(f"config.json: resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ModelFormatError(f"config.json: resample must be one of {tuple(RESAMPLE_FILTERS)}, "
                                   f"got {self.resample!r}")
        if min(self.std) <= 0:
            raise ModelFormatError(f"config.json: std must be positive, got {self.std}")
        if not isinstance(self.extra, dict):
            raise ModelFormatError("config.json: extra must be an object")

    @property
    def emits_classes(self) -> bool:
        """Whether the encoder hands on an ImageNet class distribution (so top classes can be shown)."""
        return self.encoder_output != "features"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        for name in ("extra", "resize_mode", "resample"):  # left out at their defaults: older readers accept the file
            if data[name] == ModelConfig.__dataclass_fields__[name].default or (name == "extra" and not data[name]):
                del data[name]
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        if not isinstance(data, dict):
            raise ModelFormatError("config.json must hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelFormatError(f"config.json has unknown fields: {', '.join(unknown)}")
        missing = sorted(n for n in ("backbone", "vocab_size") if n not in data)
        if missing:
            raise ModelFormatError(f"config.json lacks required fields: {', '.join(missing)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_json(path, MAX_CONFIG_BYTES))


def read_json(path: str | Path, max_bytes: int) -> Any:
    """A model file's JSON, refused with ``ModelFormatError`` when missing, over ``max_bytes`` or invalid."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise ModelFormatError(f"{path} is larger than {max_bytes // 1024} KiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{path} is not valid JSON: {error}") from None
