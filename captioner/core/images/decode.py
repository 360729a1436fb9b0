"""Loading untrusted images safely: a path, bytes, a PIL image or a numpy array in, a fresh RGB image out.

``load_image`` raises ``ImageError`` with a message fit to show a user. A file is read from its
header first (``formats.inspect``): only the formats a photo comes in are opened, the frame that
will be decoded is checked against the pixel cap, and what decoding it allocates (Pillow's image
at its mode's depth, the decoder's own buffers, the conversions to RGB) is held from
``memory.DECODE_MEMORY`` for the whole decode; a decode that could never fit that budget is
refused before anything is allocated. Truncated files are refused, not padded with grey.

JPEGs are decoded by simplejpeg (libjpeg-turbo, the library under Pillow's JPEG decoder too: the
pixels are the same), which reports data that ends early even when an end marker was added. With
``min_side`` a large JPEG is decoded at reduced size (DCT scaling) and any other large image is
reduced right after decoding, before transparency, 16-bit scaling or orientation make copies.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import simplejpeg
from PIL import Image

from captioner.core.errors import ImageError
from captioner.core.images import convert, formats
from captioner.core.images.formats import Header
from captioner.core.images.memory import DECODE_MEMORY, TRIM_AFTER_BYTES, release_free_memory, use_large_pixel_blocks

MAX_IMAGE_PIXELS = 50_000_000  # about 8000 x 6000; far above any camera photo
MAX_IMAGE_BYTES = 50 * 1024 * 1024
ACCEPTED_FORMATS = formats.ACCEPTED
# libjpeg-turbo warnings that mean pixel data is missing or damaged (others, such as a few stray
# bytes before a marker, lose nothing and are decoded leniently).
_DAMAGED_JPEG = re.compile(r"premature end|bad huffman|bad arithmetic|instead of rst", re.IGNORECASE)
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
    min_side: int | None = None,
) -> Image.Image:
    """Return ``source`` as a new RGB image (EXIF orientation applied, first frame only).

    ``min_side``: when given, an image whose shorter side is at least twice this is decoded or
    reduced by a whole factor to a shorter side of no less than ``min_side`` (a model that resizes
    to ``r`` loses nothing visible with ``min_side=2 * r``). None keeps the full size.

    Raises ``ImageError`` for missing, empty, oversized, non-image, unsupported, truncated or
    corrupt input, and for an image that needs more memory to decode than the decode budget.
    """
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a whole number of at least 1, got {min_side!r}")
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _convert_given(source, min_side)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_size((source.shape[1], source.shape[0]), max_pixels)
        return convert.from_array(source)
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
    header = formats.inspect(data)
    _check_size(header.size, max_pixels)
    return _decode(data, header, min_side)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of the frame an image file's header declares (nothing is decoded), or
    None when it is not an accepted format or its header is broken."""
    try:
        return formats.inspect(data).size
    except ImageError:
        return None


def decode_need(header: Header, scale: int = 1, factor: int = 1) -> int:
    """Bytes that decoding ``header``'s frame holds at its peak: Pillow's image beside the decoder's
    buffers, then beside what reduction (by ``factor``, after JPEG DCT scaling by ``scale``) and
    conversion to RGB make, in tiles of ``convert.TILE_PIXELS``; with the metadata read on opening."""
    width, height = -(-header.size[0] // scale), -(-header.size[1] // scale)
    pixels = width * height
    out = -(-width // factor) * -(-height // factor) * 4  # the RGB image (or the reduced one)
    decoding = pixels * header.scratch_bpp + header.scratch
    converting = out + convert.tile_bytes(pixels)
    # After a reduction the full-size image is gone: the small one is turned and converted alone.
    after = 3 * out + convert.tile_bytes(out // 4) if factor > 1 else 0
    return header.metadata + max(pixels * header.image_bpp + max(decoding, converting), after)


def plan(header: Header, min_side: int | None) -> tuple[int, int]:
    """(JPEG DCT scale, reduction factor after decoding) that bring the shorter side down to no
    less than ``min_side``: scales of 2, 4 or 8 as Pillow's ``draft`` picks them, then a whole factor."""
    if min_side is None or min(header.size) < 2 * min_side:
        return 1, 1
    scale = 1
    if header.scalable:
        most = min(header.size) // min_side
        scale = next(s for s in (8, 4, 2, 1) if most >= s)
    side = -(-min(header.size) // scale)
    return scale, side // min_side if side >= 2 * min_side else 1


def _decode(data: bytes, header: Header, min_side: int | None) -> Image.Image:
    scale, factor = plan(header, min_side)
    need = decode_need(header, scale, factor)
    if need > DECODE_MEMORY.capacity:
        width, height = header.size
        raise ImageError(f"image too large to decode: a {width} x {height} {header.kind} needs {_mb(need)} of "
                         f"memory (limit {_mb(DECODE_MEMORY.capacity)})")
    if need >= TRIM_AFTER_BYTES:
        use_large_pixel_blocks()
    try:
        with DECODE_MEMORY.hold(need):
            if header.format == "JPEG":
                image = _decode_jpeg(data, header, scale)
                turn = convert.orientation(exif=header.exif, xmp=header.xmp)
            else:
                image = _open(data, header)
                _load(image)
                turn = convert.orientation(image)  # after loading: a PNG may keep its EXIF after the pixels
            if factor > 1:
                small = convert.reduce(image, factor)
                image.close()  # frees the full-size pixels now, not when the caller's frame ends
                image = small
            turned = convert.transposed(image, turn)
            if turned is not image:
                image.close()
            result = convert.to_rgb(turned)
            if result is not turned:
                turned.close()
            return result
    finally:
        if need >= TRIM_AFTER_BYTES:
            release_free_memory()


def _decode_jpeg(data: bytes, header: Header, scale: int) -> Image.Image:
    """The JPEG at 1/``scale`` of its size, refused when its data ends early or is damaged."""
    colours = {1: "GRAY", 3: "RGB", 4: "CMYK"}[header.bands]
    size = {"min_height": -(-header.size[1] // scale), "min_width": -(-header.size[0] // scale), "min_factor": scale}
    try:
        pixels = simplejpeg.decode_jpeg(data, colours, strict=True, **size)
    except (ValueError, RuntimeError) as exc:
        if _DAMAGED_JPEG.search(str(exc)):
            raise ImageError("truncated or corrupt image") from exc
        try:  # a warning that loses nothing (a few stray bytes before a marker), or a broken file
            pixels = simplejpeg.decode_jpeg(data, colours, strict=False, **size)
        except (ValueError, RuntimeError) as again:
            raise ImageError("truncated or corrupt image") from again
    if colours == "CMYK":  # stored inverted, as Adobe writes them (and Pillow reads them)
        return Image.frombuffer("CMYK", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "CMYK;I", 0, 1)
    return Image.fromarray(pixels[:, :, 0] if colours == "GRAY" else pixels)


def _open(data: bytes, header: Header) -> Image.Image:
    """Pillow's image of ``data`` (not yet decoded), checked to be no larger than ``header`` said."""
    Image.init()
    if header.format not in Image.OPEN:  # AVIF needs Pillow 11.2 or later
        raise ImageError(f"unsupported image format: {header.kind} (this installation of Pillow cannot decode it)")
    try:
        image = Image.open(io.BytesIO(data), formats=[header.format])
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(f"image is too large: {found.group(1) if found else 'too many'} pixels") from exc
    except Exception as exc:  # a header that the plugin cannot parse
        raise ImageError("truncated or corrupt image") from exc
    pixels = image.size[0] * image.size[1]
    if pixels > header.size[0] * header.size[1] or _BYTES_PER_PIXEL.get(image.mode, 4) > header.image_bpp:
        image.close()
        raise ImageError("truncated or corrupt image (its frame does not match its header)")
    return image


def _convert_given(image: Image.Image, min_side: int | None) -> Image.Image:
    """A caller's image (decoded or not) as a new RGB image, under the budget; the caller's is not changed."""
    header = Header("given", image.size, f"{image.mode} image", image_bpp=_BYTES_PER_PIXEL.get(image.mode, 4))
    _, factor = plan(header, min_side)
    need = decode_need(header, 1, factor) + image.size[0] * image.size[1] * 4  # a copy of the caller's image
    if need >= TRIM_AFTER_BYTES:
        use_large_pixel_blocks()
    try:
        with DECODE_MEMORY.hold(need):
            _load(image)
            small = convert.reduce(image, factor) if factor > 1 else image
            turned = convert.transposed(small, convert.orientation(image))
            result = convert.to_rgb(turned)
            return result.copy() if result is image else result
    finally:
        if need >= TRIM_AFTER_BYTES:
            release_free_memory()


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
