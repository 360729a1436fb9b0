"""Worst-case PNGs for memory tests: huge 16-bit RGBA images in files of a few hundred KB,
written row by row so that making one costs no more memory than a row."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_rgba16_png(path: Path, width: int = 7000, height: int = 7000, seed: int = 0) -> Path:
    """A ``width`` x ``height`` 16-bit RGBA PNG with a half-transparent gradient (compresses well)."""
    compressor = zlib.compressobj(9)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))]
    body = []
    for y in range(height):
        level = (y * 65535 // max(1, height - 1) + seed) & 0xFFFF
        pixel = struct.pack(">HHHH", level, 65535 - level, 32768, 40000)
        body.append(compressor.compress(b"\x00" + pixel * width))
    body.append(compressor.flush())
    parts += [_chunk(b"IDAT", b"".join(body)), _chunk(b"IEND", b"")]
    path.write_bytes(b"".join(parts))
    return path
