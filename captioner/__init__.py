"""captioner: a Show-and-Tell image captioner (pretrained CNN encoder + LSTM decoder).

    from captioner import load_captioner
    result = load_captioner().caption("photo.jpg")
    print(result.caption)
"""

from captioner.core.errors import (
    CaptionerError,
    DatasetError,
    ImageError,
    LegacyImportError,
    ModelFormatError,
    ModelSourceError,
)

__all__ = ["load_captioner", "CaptionerError", "DatasetError", "ImageError", "LegacyImportError",
           "ModelFormatError", "ModelSourceError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_captioner":  # imported on first use: `import captioner` stays light
        from captioner.core.inference import load_captioner

        return load_captioner
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
