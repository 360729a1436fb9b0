"""From a decoded image of any mode to RGB without full-size copies in wider modes.

Reduction, 16-bit and float scaling, transparency and mode conversion all work on tiles of at
most ``TILE_PIXELS`` pixels, so that beside the decoded image and its RGB result they hold at most
``tile_bytes``: converting a 1000 x 49000 float image through full-size float64 arrays would
take 2 GB. EXIF orientation is read here without rewriting the metadata, which for a file with
a large EXIF block would unpack every value in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
from PIL import Image

from captioner.core.errors import ImageError

TILE_PIXELS = 1 << 16
TILE_BYTES_PER_PIXEL = 40  # what converting a tile holds at most (float64 scaling: about 30), with slack
MAX_EXIF_BYTES = 256 * 1024  # an EXIF block larger than this is not read (a JPEG's holds at most 64 KB)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


def tiles(size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """Boxes of at most ``TILE_PIXELS`` pixels covering an image of ``size``, row by row."""
    width, height = size
    columns = min(width, TILE_PIXELS)
    rows = max(1, TILE_PIXELS // width)
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield left, top, min(width, left + columns), min(height, top + rows)


def tile_bytes(pixels: int) -> int:
    """Bytes that converting an image of ``pixels`` pixels holds beside it and its result."""
    return min(pixels, TILE_PIXELS) * TILE_BYTES_PER_PIXEL


def orientation(image: Image.Image | None = None, exif: bytes = b"", xmp: bytes = b"") -> int:
    """The EXIF orientation (1-8) of ``image``, or of a raw EXIF block and XMP packet; 1 when
    there is none or it cannot be read."""
    try:
        if image is not None:
            if len(image.info.get("exif") or b"") > MAX_EXIF_BYTES:
                return 1
            value = image.getexif().get(0x0112, 1)
        else:
            value = Image.Exif().get(0x0112) if not exif or len(exif) > MAX_EXIF_BYTES else _exif(exif).get(0x0112)
            if value is None and (found := _XMP_ORIENTATION.search(xmp)):
                value = int(found[2])
        return value if value in _TRANSPOSE else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF data: keep the pixels as stored
        return 1


def _exif(block: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(block)
    return exif


def transposed(image: Image.Image, turn: int) -> Image.Image:
    """``image`` turned as EXIF orientation ``turn`` says (itself for 1)."""
    return image.transpose(_TRANSPOSE[turn]) if turn in _TRANSPOSE else image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB (itself when it is RGB already): 16/32-bit integers and floats scaled onto
    0..255 (see ``_wide_scale``), transparency flattened onto white."""
    mode = image.mode
    wide = mode.startswith("I") or mode == "F"
    if mode == "RGB" and not image.has_transparency_data:
        return image
    scale = _wide_scale(image) if wide else None
    if image.width * image.height <= TILE_PIXELS:  # one tile: no copy to cut it out
        return _piece_to_rgb(image if scale is None else Image.fromarray(scale(np.asarray(image))), mode)
    out = Image.new("RGB", image.size)
    for box in tiles(image.size):
        piece = image.crop(box)
        if scale is not None:
            piece = Image.fromarray(scale(np.asarray(piece)))
        out.paste(_piece_to_rgb(piece, mode), box[:2])
    return out


def _piece_to_rgb(piece: Image.Image, mode: str) -> Image.Image:
    try:
        if piece.has_transparency_data:
            rgba = piece.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return piece.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {mode}") from exc


def _wide_scale(image: Image.Image):
    """The mapping of a 16/32-bit integer or float image onto 0..255, from one pass over its tiles:
    integers in 0..65535 (16-bit data) and floats in [0, 1] map directly; other ranges are stretched
    from their minimum to their maximum. NaN and infinities count as 0."""
    low, high, is_float = np.inf, -np.inf, image.mode == "F"
    for box in tiles(image.size):
        values = _finite(np.asarray(image.crop(box)))
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    if is_float and 0 <= low and high <= 1:
        offset, factor = 0.0, 255.0
    elif not is_float and 0 <= low and high <= 65535:
        offset, factor = 0.0, 1 / 257.0
    else:
        offset, factor = low, (255.0 / (high - low) if high > low else 0.0)

    def scale(values: np.ndarray) -> np.ndarray:
        scaled = _finite(values).astype(np.float64)
        if offset:
            scaled -= offset
        scaled *= factor
        return np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)

    return scale


def _finite(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN and infinities as 0 (integers as they are)."""
    if values.dtype.kind != "f":
        return values
    finite = np.isfinite(values)
    return values if finite.all() else np.where(finite, values, 0)


def reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image`` shrunk by the whole ``factor`` (a box average), a band of rows at a time: Pillow's
    reduce (and any mode conversion it needs, such as premultiplying alpha) would otherwise copy
    the whole full-size image first."""
    width, height = image.size
    rows = max(1, TILE_PIXELS // (width * factor)) * factor
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
    assert out is not None  # noqa: S101 - height > 0
    out.info = dict(image.info)  # transparency travels with the pixels
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


def from_array(array: np.ndarray) -> Image.Image:
    """A new RGB image from an HxW, HxWx1, HxWx3 or HxWx4 array of uint8, uint16, bool or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"unsupported array shape {array.shape}: expected H x W, H x W x 1, 3 or 4")
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
        raise ImageError(f"unsupported array dtype {array.dtype}: expected uint8, uint16, bool or float")
    image = Image.fromarray(np.ascontiguousarray(pixels))  # RGB is copied; L and RGBA share the array
    return to_rgb(image)
