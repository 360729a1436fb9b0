"""Loading untrusted images safely and turning them into model input tensors.

``load_image`` accepts a path, raw bytes, a PIL image or a numpy array and returns a fresh
RGB ``PIL.Image``, or raises ``ImageError`` with a message fit to show a user. It checks
the declared size before decoding (decompression bombs), forces a full decode (truncated
files fail here, not later in the model) and flattens transparency onto white.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
import numpy as np
import torch
from PIL import Image, ImageOps

from captioner.core.errors import ImageError

MAX_IMAGE_PIXELS = 50_000_000  # about 8000 x 6000; far above any camera photo
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Formats people upload as photos ("JPEG" also opens multi-picture MPO files). Others
# (EPS runs Ghostscript, TGA has no magic number) are refused rather than guessed.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM", "AVIF")
# Leading bytes of the accepted formats, to tell a broken image from a non-image.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
MAX_ASPECT = 4.0  # see _limit_aspect

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
Preprocessor = Callable[[Image.Image], torch.Tensor]


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES
) -> Image.Image:
    """Return ``source`` as a new RGB image (EXIF orientation applied, first frame only).

    Raises ``ImageError`` for missing, empty, oversized, non-image, truncated or corrupt input.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _to_rgb(_decode(source))
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(os.fspath(source), max_bytes)
    else:
        raise ImageError(f"unsupported image input of type {type(source).__name__}")
    if not data:
        raise ImageError("empty file")
    if len(data) > max_bytes:
        raise ImageError(f"file too large: {_mb(len(data))} (limit {_mb(max_bytes)})")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    # PIL only warns between its own MAX_IMAGE_PIXELS (89M) and twice that; with the default
    # max_pixels those images are refused by _check_size below. Above twice, PIL refuses:
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise ImageError(f"image is too large: {size} (limit {max_pixels})") from exc
    except Image.UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":
            raise ImageError("truncated or corrupt image") from exc
        raise ImageError(f"not an image ({_describe(data)})") from exc
    except Exception as exc:  # a recognised header that its plugin cannot parse
        raise ImageError("truncated or corrupt image") from exc
    _check_size(image.size, max_pixels)
    return _to_rgb(_decode(image))


def _read_file(path: str, max_bytes: int) -> bytes:
    if not os.path.exists(path):
        raise ImageError(f"file not found: {path}")
    if not os.path.isfile(path):
        raise ImageError(f"not a file: {path}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ImageError(f"file too large: {_mb(size)} (limit {_mb(max_bytes)})")
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 100 * 1024 else f"{n} bytes"


def _describe(data: bytes) -> str:
    """Say what a file that is not an image seems to be."""
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "it is a PDF document"
    if b"<svg" in head:
        return "it is an SVG drawing; only raster images are supported"
    if head.startswith(b"<!doctype html") or b"<html" in head:
        return "it is an HTML page"
    try:
        head.decode("utf-8")
        is_text = b"\x00" not in head
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end still counts
        is_text = exc.start >= len(head) - 3 and b"\x00" not in head
    return "it is a text file" if is_text else "unrecognised or unsupported file format"


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size: {width} x {height} pixels")
    if width * height > max_pixels:
        raise ImageError(f"image is too large: {width} x {height} pixels (limit {max_pixels})")


def _decode(image: Image.Image) -> Image.Image:
    """Fully decode (surfacing truncation) and apply EXIF orientation; returns a new image."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is too large ({exc})") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, EOFError, ValueError...
        raise ImageError("truncated or corrupt image") from exc
    try:
        return ImageOps.exif_transpose(image)  # a transposed copy, or a plain copy
    except Exception:  # unreadable EXIF data: keep the pixels as stored
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float: scale, don't clip
        image = Image.fromarray(_scale_wide(np.asarray(image)))
    if image.has_transparency_data:
        try:
            rgba = image.convert("RGBA")
        except ValueError as exc:
            raise ImageError(f"unsupported image mode {mode}") from exc
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {mode}") from exc


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """Integers in 0..65535 (16-bit data) and floats in [0, 1] map onto 0..255; other ranges
    are stretched from their minimum to their maximum."""
    is_float = np.issubdtype(values.dtype, np.floating)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if is_float and 0 <= low and high <= 1:
        scaled = values * 255.0
    elif not is_float and 0 <= low and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays of uint8, uint16, bool or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(
            f"unsupported array shape {array.shape}: expected H x W, H x W x 1, 3 or 4"
        )
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    if array.dtype == np.uint8:
        pixels = array.copy()
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        pixels = np.rint(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageError("float image arrays must hold finite values in [0, 1]")
        pixels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"unsupported array dtype {array.dtype}: expected uint8, uint16, bool or float"
        )
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))


def _limit_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side of a very elongated image to ``max_aspect`` times its short side.

    The later shorter-side resize and centre crop keep only the middle of such an image
    anyway, so the crop changes no output pixel that matters, while a 10000 x 10 strip no
    longer becomes a 256000 x 256 intermediate image.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= short * max_aspect:
        return image
    keep = max(1, round(short * max_aspect))
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


RESIZE_MODES = ("shorter_side", "squash")
RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def build_preprocessor(
    resize: int, crop: int, mean: Sequence[float], std: Sequence[float], *,
    resize_mode: str = "shorter_side", resample: str = "bilinear",
) -> Preprocessor:
    """RGB image -> normalised float tensor of shape 3 x crop x crop.

    ``shorter_side``: shorter side to ``resize``, centre crop ``crop`` (torchvision's ``Resize`` +
    ``CenterCrop``). ``squash``: the whole image resized to ``crop`` x ``crop`` (the classic tutorial's
    ``sample.py``). Then ``(x - mean) / std`` on [0, 1] values, as ``ToTensor`` + ``Normalize``.
    Written with PIL and torch directly: importing torchvision costs seconds of start-up that a
    one-shot command line call would otherwise pay.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {tuple(RESAMPLE_FILTERS)}, got {resample!r}")
    method = RESAMPLE_FILTERS[resample]
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def preprocess(image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if resize_mode == "squash":
            if image.size != (crop, crop):
                image = image.resize((crop, crop), method)
        else:
            image = _limit_aspect(image)
            width, height = image.size
            short, long = min(width, height), max(width, height)
            new_long = int(resize * long / short)
            size = (resize, new_long) if width <= height else (new_long, resize)
            if size != image.size:
                image = image.resize(size, method)
            image = _centre_crop(image, crop)
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
        return pixels.permute(2, 0, 1).contiguous().float().div(255).sub_(mean_t).div_(std_t)

    return preprocess


def preprocessor_for(config) -> Preprocessor:
    """The preprocessing a model's ``ModelConfig`` records."""
    return build_preprocessor(config.resize, config.image_size, config.mean, config.std,
                              resize_mode=config.resize_mode, resample=config.resample)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` centre crop; a side shorter than ``size`` is padded with black."""
    width, height = image.size
    left = int(round((width - size) / 2.0)) if width >= size else -((size - width) // 2)
    top = int(round((height - size) / 2.0)) if height >= size else -((size - height) // 2)
    return image.crop((left, top, left + size, top + size))


def prepare_pixels(source: ImageSource, preprocess: Preprocessor) -> torch.Tensor | str:
    """``preprocess(load_image(source))``, or the message saying why that image cannot be used."""
    try:
        return preprocess(load_image(source))
    except ImageError as error:
        return str(error)


def load_pixels(sources: Sequence[ImageSource], preprocess: Preprocessor, pool: Executor | None = None
                ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Load and preprocess every source once (``pool`` decodes in parallel):
    ``(batch of the usable ones, their indices, (index, why) for the others)``."""
    results = list(pool.map(lambda source: prepare_pixels(source, preprocess), sources) if pool else
                   (prepare_pixels(source, preprocess) for source in sources))
    kept = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
    return (torch.stack([results[i] for i in kept]) if kept else None), kept, failures
