"""Files: writing them whole or not at all (under a temporary name beside the target, then renamed into
place), their digests, which files of a folder are images, and cells that spreadsheets read safely."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from captioner.core.images.formats import SUFFIXES as IMAGE_SUFFIXES  # the accepted formats' file names


def write_atomic(path: Path, data: bytes, *, prefix: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see ``write_all_atomic``)."""
    write_all_atomic({path: data}, prefix=prefix)


def write_all_atomic(files: dict[Path, bytes], *, prefix: str | None = None) -> None:
    """Write every file under a temporary name beside it (``prefix`` starts the name; default
    ``.NAME-``), flushed to disk, then rename them all into place: a reader sees each file whole or
    not at all, and an error leaves no temporary file behind. The folders are created as needed."""
    temporaries: list[Path] = []
    try:
        for path, data in files.items():
            temporaries.append(_write_temporary(Path(path), data, prefix or f".{Path(path).name}-"))
        for temporary, path in zip(temporaries, files):
            os.replace(temporary, path)
        for folder in {Path(path).parent for path in files}:
            _sync_folder(folder)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def _write_temporary(path: Path, data: bytes, prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable, where the file system allows it."""
    try:
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError:  # some file systems (and Windows) cannot fsync a folder
        pass


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_files(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``) in ``folder``, and with ``recursive`` in its subfolders, in
    sorted order of their paths; hidden files and folders (a leading ``.``) are left out, and links to
    folders are not followed."""
    root = Path(folder)
    found = []
    for top, folders, names in os.walk(root):
        folders[:] = [name for name in folders if not name.startswith(".")] if recursive else []
        found += [Path(top) / name for name in names
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def spreadsheet_safe(value: object) -> object:
    """A CSV cell for ``value``: text a spreadsheet would run as a formula gets a leading ``'``;
    ``None`` is an empty cell."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
