"""The decode memory budget, and handing freed memory back to the operating system.

The decoded pixel memory of all image decodes in flight, across threads, is capped by
``DECODE_MEMORY`` (a semaphore counted in bytes). glibc keeps freed blocks of up to 32 MB in the
arena of the thread that used them (``malloc_trim`` does not empty other threads' arenas), so from
the first large decode on Pillow allocates pixels in blocks of ``PILLOW_BLOCK_BYTES`` (64 MB, which
glibc always maps on its own and unmaps when freed), and ``release_free_memory`` runs after each
large decode. A burst of huge images decoded on many threads leaves no lasting growth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from captioner.core.options import megabytes_setting

# Decoded pixel memory that all load_image calls may hold at once (CAPTIONER_DECODE_BUDGET_MB).
DECODE_BUDGET_BYTES = megabytes_setting("CAPTIONER_DECODE_BUDGET_MB", 512)


TRIM_AFTER_BYTES = 32 * 1024 * 1024  # decodes at least this large hand freed memory back afterwards


PILLOW_BLOCK_BYTES = 64 * 1024 * 1024  # Pillow's pixel blocks from the first large decode on (see above)


class ByteSemaphore:
    """A semaphore counted in bytes: ``hold(n)`` waits until ``n`` more bytes fit under ``capacity``.

    A request larger than the whole capacity waits until nothing else is held, then runs alone.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
        self.capacity = capacity
        self.in_use = 0  # bytes held now
        self.peak = 0  # most bytes held at once so far
        self._condition = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = max(0, min(int(size), self.capacity))
        with self._condition:
            self._condition.wait_for(lambda: self.in_use + size <= self.capacity)
            self.in_use += size
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= size
                self._condition.notify_all()


DECODE_MEMORY = ByteSemaphore(DECODE_BUDGET_BYTES)


_LIBC: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc


_LARGE_BLOCKS = False


def _glibc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is False:
        _LIBC = None
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _LIBC = libc
            except (OSError, AttributeError):
                _LIBC = None
    return _LIBC


def release_free_memory() -> bool:
    """Hand memory that the C allocator keeps after frees back to the system (glibc's
    ``malloc_trim``). Returns False where that is not available (other C libraries)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def use_large_pixel_blocks() -> None:
    """Allocate Pillow's pixel memory in blocks of ``PILLOW_BLOCK_BYTES`` (once per process)."""
    global _LARGE_BLOCKS
    if not _LARGE_BLOCKS:
        _LARGE_BLOCKS = True
        if Image.core.get_block_size() < PILLOW_BLOCK_BYTES:
            Image.core.set_block_size(PILLOW_BLOCK_BYTES)
