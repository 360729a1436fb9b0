"""What an image file holds, read from its header before anything is decoded.

``inspect(data)`` accepts only the formats a photo comes in (``ACCEPTED``), walks the header of
the frame that will be decoded (the first), and returns its real size and what decoding it
allocates, or raises ``ImageError`` saying why not. Nothing here calls Pillow: Pillow decodes some
formats while opening them (an ICO holding a PNG), and its parsers do unbounded work on some
headers (a GIF comment is joined in quadratic time, every TIFF strip becomes a Python object).

The byte counts come from how Pillow and the libraries under it decode (measured in
``tests/core/test_image_formats.py``): a WebP is decoded whole into a canvas, copied to keep the
previous frame, copied again into Python and once more into Pillow's image; a progressive JPEG
keeps every DCT coefficient of the full-size image (two bytes each) whatever scale it is decoded
at; a compressed TIFF strip is inflated whole at its stored bit depth before it is unpacked.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from captioner.core.errors import ImageError

ACCEPTED = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # Pillow's names
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF"
SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif",
            ".avifs")  # the names their files have
MAX_TIFF_VALUES = 65536  # values in one TIFF field (strip and tile offsets included)
MAX_TIFF_FIELDS = 1024  # fields in a TIFF directory (real files have a few dozen)
MAX_PNG_CHUNKS = 131072
MAX_GIF_COMMENT = 65536
MAX_GIF_EXTENSIONS = 1024 * 1024  # bytes of extension blocks before the first frame
PNG_TEXT_LIMIT = 64 * 1024 * 1024  # Pillow refuses more text than this (PngImagePlugin.MAX_TEXT_MEMORY)
PNG_TEXT_CHUNK = 1024 * 1024  # and inflates no text chunk beyond this (MAX_TEXT_CHUNK)
DEFLATE_RATIO = 1032  # the most deflate can expand


@dataclass(frozen=True)
class Header:
    """The frame a decode produces and what producing it holds in memory.

    ``image_bpp``: bytes per pixel of Pillow's image of the frame. ``scratch_bpp``: bytes per
    decoded pixel the decoder holds beside it while decoding. ``scratch``: bytes it holds whatever
    the scale (coefficient buffers, strips, rows). ``metadata``: bytes of text or profiles read
    while opening and kept with the image. ``scalable``: JPEG, decodable at 1/2, 1/4 or 1/8 size."""

    format: str
    size: tuple[int, int]
    kind: str  # for messages: "progressive JPEG", "16-bit PNG", "WebP", "32-bit float TIFF"
    image_bpp: int
    scratch_bpp: int = 0
    scratch: int = 0
    metadata: int = 0
    scalable: bool = False
    bands: int = 0  # a JPEG's colour components
    exif: bytes = b""  # a JPEG's EXIF block and XMP packet (for its orientation)
    xmp: bytes = b""


def inspect(data: bytes) -> Header:
    """The header of the first frame of ``data``. Raises ``ImageError``: not an image, a format
    outside ``ACCEPTED``, a header cut short, or one that would make Pillow do unbounded work."""
    reader = _READERS.get(identify(data))
    try:
        return reader(data)  # type: ignore[misc]
    except ImageError:
        raise
    except (struct.error, IndexError, KeyError, ValueError, ZeroDivisionError) as exc:
        raise ImageError("truncated or corrupt image") from exc


def identify(data: bytes) -> str:
    """The accepted format ``data`` is in, from its first bytes; ``ImageError`` naming what it is otherwise."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[4:8] == b"ftyp":
        size = min(max(int.from_bytes(head[:4], "big"), 16), 256)
        brands = {data[i:i + 4] for i in range(8, size, 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if brands & {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}:
            raise ImageError(f"unsupported image format: HEIC (accepted: {ACCEPTED_NAMES}); convert it to JPEG")
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic) and (name not in ("ICO icon", "CUR cursor") or head[4:6] != b"\x00\x00"):
            raise ImageError(f"unsupported image format: {name} (accepted: {ACCEPTED_NAMES})")
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7") and head[2:3].isspace():
        raise ImageError(f"unsupported image format: Netpbm (accepted: {ACCEPTED_NAMES})")
    raise ImageError(f"not an image ({describe(data)})")


_OTHER_FORMATS = (
    (b"\x00\x00\x01\x00", "ICO icon"), (b"\x00\x00\x02\x00", "CUR cursor"), (b"icns", "ICNS icon"),
    (b"8BPS", "Photoshop document"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
    (b"\xff\n", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"qoif", "QOI"), (b"DDS ", "DDS texture"),
    (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "PostScript"), (b"\x01\xda", "SGI"), (b"SIMPLE  =", "FITS"),
)


def describe(data: bytes) -> str:
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


# ---- JPEG -------------------------------------------------------------------------------------

_SOF = {0xC0: "baseline", 0xC1: "baseline", 0xC2: "progressive", 0xC9: "arithmetic", 0xCA: "progressive"}
_UNSUPPORTED_SOF = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical",
                    0xCB: "lossless", 0xCD: "hierarchical", 0xCE: "hierarchical", 0xCF: "hierarchical"}


def _jpeg(data: bytes) -> Header:
    pos, frame, exif, xmp = 2, None, b"", b""
    while True:
        pos = data.index(b"\xff", pos)
        marker = data[pos + 1]
        if marker in (0xFF, 0x00, 0x01) or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            raise ValueError("end of image before any scan")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        segment = data[pos + 4:pos + 2 + length]
        if len(segment) != length - 2:
            raise ValueError("segment cut short")
        if marker in _UNSUPPORTED_SOF:
            raise ImageError(f"unsupported JPEG variant: {_UNSUPPORTED_SOF[marker]}")
        if marker in _SOF and frame is None:
            frame = (marker, segment)
            if segment[0] != 8:
                raise ImageError(f"unsupported JPEG variant: {segment[0]}-bit samples")
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and not exif:
            exif = segment
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/\x00") and not xmp:
            xmp = segment.split(b"\x00", 1)[1]
        elif marker == 0xDA:
            break
        pos += 2 + length
    if frame is None:
        raise ValueError("no frame header")
    marker, segment = frame
    _, height, width, count = struct.unpack_from(">BHHB", segment)
    if width == 0 or height == 0:
        raise ImageError("unsupported JPEG variant: height given after the scan")
    factors = [(segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(count)]
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    # A progressive file, or a sequential one in several scans, makes libjpeg keep every coefficient:
    # per component, its blocks (rounded to whole MCUs) x 64 x 2 bytes.
    progressive = _SOF[marker] == "progressive"
    multi_scan = progressive or _more_scans(data, pos)
    coefficients = sum(_round_up(math.ceil(math.ceil(width * h / h_max) / 8), h)
                       * _round_up(math.ceil(math.ceil(height * v / v_max) / 8), v) * 128 for h, v in factors)
    rows = width * 8 * v_max * count * 2  # a row of MCUs, sampled and upsampled
    channels = {1: 1, 3: 3, 4: 4}.get(count)
    if channels is None:
        raise ImageError(f"unsupported JPEG variant: {count} colour components")
    sampling = "" if count != 3 else " 4:4:4" if factors[0] == factors[1] else ""
    kind = ("progressive JPEG" if progressive else "multi-scan JPEG" if multi_scan else "JPEG") + \
        (sampling if multi_scan else "")
    return Header("JPEG", (width, height), kind, image_bpp=1 if channels == 1 else 4, scratch_bpp=channels,
                  scratch=(coefficients if multi_scan else 0) + rows, scalable=True, bands=count, exif=exif, xmp=xmp)


_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # stuffed bytes and restarts are not markers


def _more_scans(data: bytes, scan: int) -> bool:
    """Whether another scan follows the one at ``scan`` before the image ends. Entropy-coded data never
    holds a marker's bytes, so a quick search settles it unless an end marker comes first: the end of
    this image (with another appended, as in MPO files) or those bytes inside a segment between scans."""
    start = scan + 2 + struct.unpack_from(">H", data, scan + 2)[0]
    later = data.find(b"\xff\xda", start)
    if later < 0:
        return False
    if data.find(b"\xff\xd9", start, later) < 0:
        return True
    pos = start
    while (found := _MARKER_IN_SCAN.search(data, pos)) is not None:  # walk the markers, skipping segments
        marker = data[found.start() + 1]
        if marker in (0xDA, 0xD9):
            return marker == 0xDA
        pos = found.start() + 2 + struct.unpack_from(">H", data, found.start() + 2)[0]
    return False


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# ---- PNG --------------------------------------------------------------------------------------

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_KINDS = {0: "grey", 2: "RGB", 3: "palette", 4: "grey and alpha", 6: "RGBA"}


def _png(data: bytes) -> Header:
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ValueError("bad IHDR")
    text, pos, chunks = 0, 8, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"PNG has over {MAX_PNG_CHUNKS} chunks")
        if kind == b"tEXt":
            text += length
        elif kind in (b"zTXt", b"iTXt"):
            text += min(PNG_TEXT_CHUNK, length * DEFLATE_RATIO)
        if kind == b"IEND":
            break
        pos += 12 + length
    row = (width * _PNG_CHANNELS[colour] * depth + 7) // 8 + 1
    bpp = 1 if colour == 3 or (colour == 0 and depth <= 8) else 2 if colour == 0 else 4
    return Header("PNG", (width, height), f"{depth}-bit {_PNG_KINDS[colour]} PNG", image_bpp=bpp,
                  scratch=2 * row, metadata=min(text, PNG_TEXT_LIMIT) + (PNG_TEXT_CHUNK if text else 0))


# ---- GIF --------------------------------------------------------------------------------------

def _gif(data: bytes) -> Header:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    comment = extensions = 0
    while True:
        block = data[pos]
        if block == 0x2C:  # the first frame: Pillow widens the canvas to hold it
            left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            if data[pos + 10:pos + 11] == b"":
                raise ValueError("frame cut short")
            size = (max(width, left + w), max(height, top + h))
            # The frame in palette indices, and a fill of its extent that Pillow makes for disposal.
            return Header("GIF", size, "GIF", image_bpp=1, scratch=w * h)
        if block != 0x21:
            raise ValueError("no frame")
        label, pos = data[pos + 1], pos + 2
        while (length := data[pos]) != 0:
            extensions += length
            if label == 0xFE:
                comment += length
                if comment > MAX_GIF_COMMENT:
                    raise ImageError(f"GIF comment too long: over {MAX_GIF_COMMENT} bytes")
            if extensions > MAX_GIF_EXTENSIONS:
                raise ImageError(f"GIF has over {MAX_GIF_EXTENSIONS} bytes of extensions before its first frame")
            pos += 1 + length
        pos += 1


# ---- WebP -------------------------------------------------------------------------------------

def _webp(data: bytes) -> Header:
    fourcc, length = struct.unpack_from("<4sI", data, 12)
    payload = data[20:20 + min(length, 10)]
    if fourcc == b"VP8 ":
        if payload[3:6] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 frame")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", payload, 6))
        kind = "lossy WebP"
    elif fourcc == b"VP8L":
        if payload[0] != 0x2F:
            raise ValueError("bad VP8L frame")
        bits = struct.unpack_from("<I", payload, 1)[0]
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        kind = "lossless WebP"
    elif fourcc == b"VP8X":
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        kind = "animated WebP" if payload[0] & 0x02 else "WebP"
    else:
        raise ValueError("no WebP frame")
    # Pillow decodes every WebP through libwebp's animation decoder: the canvas, the previous canvas
    # and the frame's copy into Python, beside Pillow's image; a lossless frame's own ARGB buffer
    # overlaps them in part (16.1 to 16.4 bytes a pixel measured: 17 counted).
    return Header("WEBP", (width, height), kind, image_bpp=4, scratch_bpp=13)


# ---- BMP --------------------------------------------------------------------------------------

def _bmp(data: bytes) -> Header:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif header_size >= 40:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    else:
        raise ValueError("unknown BMP header")
    if compression in (4, 5):
        raise ImageError("unsupported BMP variant: it holds a JPEG or PNG")
    size = (abs(width), abs(height))
    # Pillow expands run-length encoded pixels in Python: a bytearray, then a copy as bytes.
    return Header("BMP", size, f"{bits}-bit BMP", image_bpp=1 if bits <= 8 else 4,
                  scratch_bpp=2 if compression in (1, 2) else 0)


# ---- TIFF -------------------------------------------------------------------------------------

_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_BYTES = (1, 2, 6, 7)  # byte, ASCII, signed byte, undefined: kept as bytes, not unpacked
_TIFF_FORMATS = {1: "", 2: "signed ", 3: "float "}


def _tiff(data: bytes) -> Header:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count = struct.unpack_from(order + ("Q" if big else "H"), data, offset)[0]
    if count > MAX_TIFF_FIELDS:
        raise ImageError(f"TIFF directory has {count} fields (limit {MAX_TIFF_FIELDS})")
    fields: dict[int, tuple[int, ...]] = {}
    entry_size, inline = (20, 8) if big else (12, 4)
    for index in range(count):
        at = offset + (8 if big else 2) + index * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, at)
        values = struct.unpack_from(order + ("Q" if big else "I"), data, at + 4)[0]
        if kind not in _TIFF_BYTES and values > MAX_TIFF_VALUES:
            what = "strips" if tag in (273, 279) else "tiles" if tag in (324, 325) else f"values in field {tag}"
            raise ImageError(f"TIFF has {values} {what} (limit {MAX_TIFF_VALUES})")
        if tag in (256, 257, 258, 259, 262, 277, 278, 284, 322, 323, 339) and kind in (3, 4, 16):
            width = _TIFF_TYPE_BYTES[kind]
            where = at + 4 + (8 if big else 4)
            if width * values > inline:
                where = struct.unpack_from(order + ("Q" if big else "I"), data, where)[0]
            code = {2: "H", 4: "I", 8: "Q"}[width]
            fields[tag] = struct.unpack_from(f"{order}{min(values, 16)}{code}", data, where)
    width, height = fields[256][0], fields[257][0]
    samples = fields.get(277, (1,))[0]
    bits = max(fields.get(258, (1,)))
    sample_format = fields.get(339, (1,))[0]
    compression = fields.get(259, (1,))[0]
    if 322 in fields and 323 in fields:
        unit = fields[322][0] * fields[323][0]
    else:
        unit = width * min(height, fields.get(278, (height,))[0] or height)
    bpp = 4 if samples > 1 or bits > 16 or (bits == 16 and sample_format != 1) else 2 if bits == 16 else 1
    # A strip or tile is read whole at its stored depth (compressed ones by libtiff) before it is
    # unpacked; JPEG-compressed ones are decoded by libjpeg into RGBA, with coefficient buffers.
    stored = unit * samples * bits // 8
    extra = unit * (4 + 2 * samples) if compression in (6, 7) or fields.get(262, (0,))[0] == 6 else 0
    kind = f"{bits}-bit {_TIFF_FORMATS.get(sample_format, '')}TIFF"
    return Header("TIFF", (width, height), kind, image_bpp=bpp, scratch=stored + extra)


# ---- AVIF -------------------------------------------------------------------------------------

def _avif(data: bytes) -> Header:
    meta = _box(data, b"meta")
    sizes = []
    at = data.find(b"ispe", meta[0], meta[1])
    while at >= 0:
        sizes.append(struct.unpack_from(">II", data, at + 8))
        at = data.find(b"ispe", at + 4, meta[1])
    if not sizes:
        raise ValueError("no image size")
    size = max(sizes, key=lambda s: s[0] * s[1])
    # libavif's planes at up to 16 bits a sample with alpha (8), its RGB image (4), the copy into
    # Python (4), Pillow's image (4); a grid keeps its tiles as well as the whole (8 more).
    grid = data.find(b"grid", meta[0], meta[1]) >= 0
    return Header("AVIF", size, "AVIF", image_bpp=4, scratch_bpp=16 + (8 if grid else 0))


def _box(data: bytes, name: bytes) -> tuple[int, int]:
    """(start, end) of the top-level ISO media box ``name``."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            raise ValueError("bad box")
        if kind == name:
            return pos, min(len(data), pos + size)
        pos += size
    raise ValueError(f"no {name!r} box")


_READERS = {"JPEG": _jpeg, "PNG": _png, "GIF": _gif, "WEBP": _webp, "BMP": _bmp, "TIFF": _tiff, "AVIF": _avif}
