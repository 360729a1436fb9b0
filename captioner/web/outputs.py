"""The one folder where the app writes what it hands back: heatmap overlays and batch downloads.

Gradio copies every file a handler returns into its own cache unless the file lies in a static path
(``gr.set_static_paths``), so this folder is registered as one: each file is written once, served from
where it lies, and counted here. Files are grouped in one sub-folder per request (a random name, so
nobody guesses another visitor's files); the bytes of every file are counted against ``max_bytes``
*before* it is written, the oldest request folders giving way, so requests writing at the same moment
never take the folder over its cap. Folders older than ``max_age_s`` are removed. File names never
carry user text.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from captioner.core.options import megabytes_setting

MB = 1024 * 1024
MAX_AGE_S = 3600  # a request's files are removed after this
MAX_BYTES = 256 * MB  # and the oldest go first when the folder would hold more than this


class OutputsFull(OSError):
    """A file does not fit under the folder's cap even with every older request's files removed, or its
    request's own files were removed for newer ones."""


class OutputFolder:
    """A temporary folder that Gradio serves without copying; removed with this object.

    ``new_request()`` makes a request's sub-folder; ``write(folder, name, data)`` writes one file in it
    after making room for it. ``max_bytes`` defaults to ``$CAPTIONER_OUTPUT_MB`` MB, else ``MAX_BYTES``.
    """

    def __init__(self, max_bytes: int | None = None, max_age_s: float = MAX_AGE_S):
        self.max_bytes = max_bytes if max_bytes is not None else megabytes_setting("CAPTIONER_OUTPUT_MB", MAX_BYTES // MB)
        self.max_age_s = max_age_s
        self._temp = tempfile.TemporaryDirectory(prefix="captioner-app-")
        self.root = Path(self._temp.name).resolve()
        gr.set_static_paths([self.root])  # served from here: no copy in Gradio's cache
        self._lock = threading.Lock()
        self._folders: OrderedDict[Path, tuple[float, int]] = OrderedDict()  # oldest first: (created, bytes)

    @property
    def used(self) -> int:
        """Bytes counted for the files written and being written."""
        with self._lock:
            return sum(size for _, size in self._folders.values())

    def new_request(self) -> Path:
        """A new, empty folder for one request's files."""
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._folders[folder] = (time.monotonic(), 0)
        return folder

    def write(self, folder: Path, name: str, data: bytes) -> Path:
        """``data`` as ``folder/name``, counted first: older requests' folders are removed until it fits.

        Raises ``OutputsFull`` when it cannot fit, or when ``folder`` itself was removed to make room
        for newer requests (the server is flooded). Writing holds the folder's
        lock (files are written whole, a few MB at most), so what is on disk never passes the cap."""
        if os.sep in name or name.startswith("."):
            raise ValueError(f"not a plain file name: {name!r}")
        with self._lock:
            self._make_room(folder, len(data))
            path = folder / name
            try:
                with open(path, "xb") as handle:
                    handle.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            created, used = self._folders[folder]
            self._folders[folder] = (created, used + len(data))
        return path

    def close(self) -> None:
        self._temp.cleanup()

    def _make_room(self, folder: Path, size: int) -> None:
        """Remove expired request folders, then the oldest others, until ``size`` more bytes fit."""
        if folder not in self._folders:
            raise OutputsFull("the server is busy: this request's results were removed to make room for newer "
                              "ones; try again in a minute")
        now = time.monotonic()
        total = sum(used for _, used in self._folders.values())
        for other, (created, used) in list(self._folders.items()):
            if other == folder or (now - created <= self.max_age_s and total + size <= self.max_bytes):
                continue
            del self._folders[other]
            shutil.rmtree(other, ignore_errors=True)
            total -= used
        if total + size > self.max_bytes:
            raise OutputsFull(f"the server's space for results is full ({self.max_bytes // MB} MB); "
                              "try again in a minute")
