"""Crafted images that cost far more to decode than their size on disk suggests, made in the tests
(never committed): each is written piece by piece so that making it costs little memory.

Each builder returns the file's bytes. Sizes default to the attacks measured against the app:
an ICO whose directory declares 256 x 256 while its entry holds a 13000 x 13000 PNG, a
1000 x 49000 float TIFF in one deflated strip, a 7000 x 7000 lossless WebP of a few bytes, a
7000 x 7000 progressive JPEG without chroma subsampling, a thin 16-bit RGBA PNG, and a JPEG cut
short after its header promised 7000 x 7000 pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def repeated_zlib(unit: bytes, times: int) -> bytes:
    """A zlib stream of ``unit`` repeated ``times`` times, made by compressing ``unit`` once: a full
    flush makes its compressed blocks independent of what came before, so they can be repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(unit) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(times):
        checksum = zlib.adler32(unit, checksum)
    return b"\x78\xda" + block * times + end + struct.pack(">I", checksum)


def png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 6) -> bytes:
    """A ``width`` x ``height`` PNG of one colour (colour type 6: RGBA; 2: RGB; 0: grey), made in
    well under a second whatever its size: a 13000 x 13000 RGBA image is about 700 KB."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    sample = bit_depth // 8
    row = b"\x00" + bytes([90, 160, 40, 200][:channels] * sample) * width if sample == 1 else \
        b"\x00" + b"".join(v.to_bytes(2, "big") for v in (23000, 41000, 10000, 52000)[:channels]) * width
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", _repeated_rows(row, height)),
                     _chunk(b"IEND", b"")])


def _repeated_rows(row: bytes, count: int) -> bytes:
    """``repeated_zlib`` of ``count`` copies of ``row``, compressing about a megabyte of rows at once."""
    rows = max(1, min(count, (1 << 20) // len(row)))
    while count % rows:
        rows -= 1
    return repeated_zlib(row * rows, count // rows)


def ico_holding_png(side: int = 13000, declared: int = 256) -> bytes:
    """An icon file whose one directory entry declares ``declared`` x ``declared`` (256 is stored as
    0) and holds a ``side`` x ``side`` RGBA PNG."""
    inner = png(side, side)
    stored = 0 if declared >= 256 else declared
    entry = struct.pack("<BBBBHHII", stored, stored, 0, 0, 1, 32, len(inner), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + inner


def tiff(width: int = 1000, height: int = 49000, *, bits: int = 32, sample_format: int = 3, samples: int = 1,
         rows_per_strip: int | None = None, pages: int = 1) -> bytes:
    """A little-endian TIFF of deflated strips (one strip of the whole image by default) of one grey
    level (0.5 for 32-bit floats); ``sample_format`` 1 unsigned, 2 signed, 3 IEEE float.
    ``pages`` > 1 appends small 8-bit pages after the first."""
    rows = rows_per_strip or height
    row = struct.pack("<f", 0.5) * width * samples if (bits, sample_format) == (32, 3) else \
        bytes([7]) * (width * samples * bits // 8)
    strips = [_repeated_rows(row, min(rows, height - top)) for top in range(0, height, rows)]
    out = io.BytesIO()
    out.write(b"II*\x00" + struct.pack("<I", 0))
    offsets = []
    for strip in strips:
        offsets.append(out.tell())
        out.write(strip)
    first_ifd = _write_ifd(out, width, height, bits, samples, sample_format, rows, offsets, [len(s) for s in strips])
    out.seek(4)
    out.write(struct.pack("<I", first_ifd))
    previous_next = first_ifd
    for _ in range(pages - 1):
        out.seek(0, 2)
        small = zlib.compress(bytes(64 * 64))
        strip_at = out.tell()
        out.write(small)
        ifd = _write_ifd(out, 64, 64, 8, 1, 1, 64, [strip_at], [len(small)])
        _link_next(out, previous_next, ifd)
        previous_next = ifd
    return out.getvalue()


def _write_ifd(out: io.BytesIO, width: int, height: int, bits: int, samples: int, sample_format: int,
               rows: int, offsets: list[int], counts: list[int]) -> int:
    """Write one IFD (and its out-of-line arrays) at the end of ``out``; return its offset."""
    out.seek(0, 2)
    if out.tell() % 2:
        out.write(b"\x00")
    arrays = {}
    for tag, values in ((273, offsets), (279, counts), (258, [bits] * samples), (339, [sample_format] * samples)):
        if len(values) > (2 if tag in (258, 339) else 1):
            arrays[tag] = out.tell()
            out.write(struct.pack(f"<{len(values)}{'H' if tag in (258, 339) else 'I'}", *values))
    entries = [
        (256, 4, 1, width), (257, 4, 1, height),
        (258, 3, samples, arrays.get(258, bits)), (259, 3, 1, 8),
        (262, 3, 1, 2 if samples >= 3 else 1), (273, 4, len(offsets), arrays.get(273, offsets[0])),
        (277, 3, 1, samples), (278, 4, 1, rows), (279, 4, len(counts), arrays.get(279, counts[0])),
        (284, 3, 1, 1), (339, 3, samples, arrays.get(339, sample_format)),
    ]
    if samples == 4:
        entries.append((338, 3, 1, 2))  # extra sample: unassociated alpha
    entries.sort()
    at = out.tell()
    out.write(struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 and count <= 2 and tag not in arrays else \
            struct.pack("<I", value)
        out.write(struct.pack("<HHI", tag, kind, count) + packed)
    out.write(struct.pack("<I", 0))
    return at


def _link_next(out: io.BytesIO, ifd: int, next_ifd: int) -> None:
    data = out.getbuffer()
    count = struct.unpack_from("<H", data, ifd)[0]
    del data
    out.seek(ifd + 2 + 12 * count)
    out.write(struct.pack("<I", next_ifd))


def lossless_webp(width: int = 7000, height: int = 7000, alpha: bool = False) -> bytes:
    """A lossless (VP8L) WebP of one colour, written by hand: every prefix code holds one symbol, so
    the pixels take no bits at all and the file is a few dozen bytes whatever its size."""
    bits = _Bits()
    bits.put(0x2F, 8)
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(int(alpha), 1)
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (120, 60, 30, 255, 0):  # green, red, blue, alpha, distance: one symbol each
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # stored in 8 bits
        bits.put(symbol, 8)
    payload = bits.bytes()
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


class _Bits:
    """Least-significant-bit-first writer, as VP8L reads."""

    def __init__(self) -> None:
        self.value, self.count = 0, 0

    def put(self, value: int, width: int) -> None:
        self.value |= value << self.count
        self.count += width

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def progressive_jpeg(width: int = 7000, height: int = 7000, *, subsampling: int = 0, quality: int = 30) -> bytes:
    """A progressive JPEG of a smooth picture (4:4:4 by default: the largest coefficient buffers)."""
    buffer = io.BytesIO()
    _picture(width, height).save(buffer, "JPEG", progressive=True, subsampling=subsampling, quality=quality)
    return buffer.getvalue()


def truncated_jpeg(width: int = 7000, height: int = 7000, keep: float = 0.3) -> bytes:
    """A baseline JPEG whose header promises ``width`` x ``height`` cut to ``keep`` of its bytes."""
    buffer = io.BytesIO()
    _picture(width, height).save(buffer, "JPEG", quality=30)
    data = buffer.getvalue()
    return data[: int(len(data) * keep)]


def _picture(width: int, height: int) -> Image.Image:
    """A plain picture with a few shapes (cheap to make and to encode at any size)."""
    image = Image.new("RGB", (width, height), (70, 130, 180))
    image.paste((230, 200, 60), (width // 8, height // 8, width // 2, height // 2))
    image.paste((40, 120, 40), (0, height * 2 // 3, width, height))
    return image
