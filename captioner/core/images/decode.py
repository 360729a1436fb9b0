"""Loading untrusted images safely: a path, bytes, a PIL image or a numpy array in, a fresh RGB image out.

``load_image`` raises ``ImageError`` with a message fit to show a user. It checks the declared size
before decoding (decompression bombs), forces a full decode (truncated files fail here, not later in
the model) and flattens transparency onto white.

Memory is bounded by design. With ``min_side`` a large image is decoded at reduced size where the
format allows (JPEG's DCT scaling through ``Image.draft``) and otherwise reduced right after
decoding, in small bands, before 16-bit scaling, transparency or EXIF rotation make full-size
copies. Every decode holds its pixel memory from ``memory.DECODE_MEMORY`` while it runs.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
from PIL import Image, ImageOps

from captioner.core.errors import ImageError
from captioner.core.images.memory import DECODE_MEMORY, TRIM_AFTER_BYTES, release_free_memory, use_large_pixel_blocks

MAX_IMAGE_PIXELS = 50_000_000  # about 8000 x 6000; far above any camera photo
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Formats people upload as photos ("JPEG" also opens multi-picture MPO files). Others
# (EPS runs Ghostscript, TGA has no magic number) are refused rather than guessed.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM", "AVIF")
# Leading bytes of the accepted formats, to tell a broken image from a non-image.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
    min_side: int | None = None,
) -> Image.Image:
    """Return ``source`` as a new RGB image (EXIF orientation applied, first frame only).

    ``min_side``: when given, an image whose shorter side is at least twice this is decoded or
    reduced by a whole factor to a shorter side of no less than ``min_side`` (a model that resizes
    to ``r`` loses nothing visible with ``min_side=2 * r``). None keeps the full size.

    Raises ``ImageError`` for missing, empty, oversized, non-image, truncated or corrupt input.
    """
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a whole number of at least 1, got {min_side!r}")
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _bounded_decode(source, min_side, owned=False)
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
    return _bounded_decode(image, min_side, owned=True)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header (nothing is decoded), or None when the header
    is not one of an accepted format."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            return image.size
    except Exception:  # noqa: BLE001 - load_image says what is wrong with it
        return None


def decoded_bytes(size: tuple[int, int], mode: str, *, reduced: bool = False) -> int:
    """Pixel memory that decoding an image of this size and mode holds at its peak, about.

    Pillow keeps one byte per pixel for 1-bit, greyscale and palette images, two for 16-bit
    greyscale and four for everything else (RGB included). Reduction works band by band, so it
    adds little; without it the conversions to RGB make full-size copies (counted as two more
    4-byte images).
    """
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return size[0] * size[1] * (per_pixel + (0 if reduced else 8))


def _bounded_decode(image: Image.Image, min_side: int | None, owned: bool) -> Image.Image:
    """Decode under ``DECODE_MEMORY``: reduced early when ``min_side`` allows, then RGB.
    ``owned``: the image was opened here, so its full-size pixels are freed as soon as possible."""
    reduces = min_side is not None and min(image.size) >= 2 * min_side
    if reduces and owned and image.format in ("JPEG", "MPO") and getattr(image, "tile", None):
        try:
            image.draft(image.mode, (min_side, min_side))  # DCT scaling, never below min_side
        except (OSError, ValueError):
            pass
        reduces = min(image.size) >= 2 * min_side
    need = decoded_bytes(image.size, image.mode, reduced=reduces)
    if need >= TRIM_AFTER_BYTES:
        use_large_pixel_blocks()
    try:
        with DECODE_MEMORY.hold(need):
            _load(image)
            small = _reduce(image, min_side) if reduces else image
            if owned and small is not image:
                image.close()  # frees the full-size pixels now, not when the caller's frame ends
            # An image opened here is turned and converted in place of copies; the caller's is copied.
            result = _to_rgb(_transpose(small, in_place=owned), copy=False)
            if owned and result is not small:
                small.close()
            return result
    finally:
        if need >= TRIM_AFTER_BYTES:
            release_free_memory()


_REDUCE_BAND_BYTES = 2 * 1024 * 1024  # pixels converted at once while reducing (small: see the module notes)


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink by the largest whole factor that keeps the shorter side at least ``min_side``.

    Works in horizontal bands: Pillow's reduce (and any mode conversion it needs, such as
    premultiplying alpha) would otherwise copy the whole full-size image first.
    """
    factor = min(image.size) // min_side
    if factor < 2:
        return image
    width, height = image.size
    rows = max(1, _REDUCE_BAND_BYTES // (width * 4 * factor)) * factor
    out: Image.Image | None = None
    for top in range(0, height, rows):
        band = _reducible(image.crop((0, top, width, min(height, top + rows))))
        try:
            small = band.reduce(factor)
        except ValueError:  # a mode Pillow cannot reduce: a box-filtered resize does the same job
            small = band.resize((-(-band.width // factor), -(-band.height // factor)), Image.Resampling.BOX)
        if out is None:
            out = Image.new(small.mode, (small.width, -(-height // factor)))
        out.paste(small, (0, top // factor))
    assert out is not None  # noqa: S101 - height >= 2 * min_side > 0
    out.info = dict(image.info)  # EXIF orientation and transparency travel with the pixels
    return out


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode that Pillow can average (1-bit, palette and 16-bit modes cannot be)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image


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


def _load(image: Image.Image) -> None:
    """Fully decode, surfacing truncation as ``ImageError``."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is too large ({exc})") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, EOFError, ValueError...
        raise ImageError("truncated or corrupt image") from exc


def _transpose(image: Image.Image, in_place: bool = False) -> Image.Image:
    """Apply EXIF orientation: to ``image`` itself when ``in_place``, else to a new copy."""
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)  # a transposed copy, or a plain copy
    except Exception:  # unreadable EXIF data: keep the pixels as stored
        return image if in_place else image.copy()


def _to_rgb(image: Image.Image, copy: bool) -> Image.Image:
    """``image`` as RGB: converted, or itself when it is RGB already (a copy with ``copy``)."""
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
        return image.copy() if copy else image
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
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), copy=True)  # fromarray may share the array


