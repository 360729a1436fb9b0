"""Reading Qt's compiled resource files (``.rcc``), as GCompris ships its pictures and data.

The layout (Qt's ``rcc`` format, versions 1-3): a 20-byte header (``qres``, version, and the offsets
of the tree, the data and the names), then a tree of fixed-size nodes. A directory node names its
children's range; a file node points at its data: a big-endian length, then the bytes, which are
zlib-compressed (after a 4-byte uncompressed length) when the node's flag says so. Names are UTF-16
with a length and a hash in front.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from captioner.core.errors import DatasetError

_COMPRESSED = 0x01
_DIRECTORY = 0x02
_ZSTD = 0x04


@dataclass(frozen=True)
class _Entry:
    flags: int
    start: int
    length: int


class QtResources:
    """The files inside one ``.rcc``, by their resource path (``/gcompris/src/...``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._bytes = self.path.read_bytes()
        if self._bytes[:4] != b"qres" or len(self._bytes) < 20:
            raise DatasetError(f"{self.path} is not a Qt resource file (no 'qres' header).")
        version, self._tree, self._data, self._names = struct.unpack(">IIII", self._bytes[4:20])
        if version not in (1, 2, 3):
            raise DatasetError(f"{self.path}: Qt resource format version {version} is not supported.")
        self._node = 14 if version == 1 else 22
        self._entries: dict[str, _Entry] = {}
        self._walk(0, "")

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def read(self, resource_path: str) -> bytes:
        """The file's bytes, decompressed."""
        entry = self._entries.get(resource_path)
        if entry is None:
            raise DatasetError(f"{self.path} holds no {resource_path}.")
        raw = self._bytes[entry.start : entry.start + entry.length]
        if entry.flags & _ZSTD:
            raise DatasetError(f"{resource_path} in {self.path} is zstd-compressed, which this reader does not read.")
        return zlib.decompress(raw[4:]) if entry.flags & _COMPRESSED else raw

    def _name(self, offset: int) -> str:
        start = self._names + offset
        (length,) = struct.unpack(">H", self._bytes[start : start + 2])
        return self._bytes[start + 6 : start + 6 + 2 * length].decode("utf-16-be")

    def _walk(self, node: int, prefix: str) -> None:
        at = self._tree + node * self._node
        name_offset, flags = struct.unpack(">IH", self._bytes[at : at + 6])
        path = prefix if node == 0 else f"{prefix}/{self._name(name_offset)}"
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", self._bytes[at + 6 : at + 14])
            for child in range(first, first + count):
                self._walk(child, path)
        else:
            (data_offset,) = struct.unpack(">I", self._bytes[at + 10 : at + 14])
            start = self._data + data_offset
            (length,) = struct.unpack(">I", self._bytes[start : start + 4])
            self._entries[path] = _Entry(flags, start + 4, length)
