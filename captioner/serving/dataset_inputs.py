"""Where the images of a ``caption-dataset`` job are: a folder, a glob pattern, a table of paths or one
file, on any filesystem pyarrow knows (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, local paths)."""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from captioner.core.errors import CaptionerError
from captioner.core.files import IMAGE_SUFFIXES

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet",
                  ".pq": "parquet"}


def filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, its path for ``location``, the URI prefix that turns such a path back into a URI)."""
    if "://" in location and not location.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path, location.split("://", 1)[0] + "://"
    path = location[len("file://"):] if location.startswith("file://") else location
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path)), ""


def list_inputs(source: str | os.PathLike, path_column: str = "path") -> list[str]:
    """The image paths ``source`` names, sorted and without repeats.

    ``source``: a folder (its image files, recursively; hidden files left out), a glob pattern
    (``**`` matches any depth), a CSV / JSON Lines / Parquet table whose ``path_column`` holds the
    paths (relative ones are taken from the table's folder), or one image file. Any filesystem
    pyarrow knows (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, local paths).
    Raises ``CaptionerError`` when there is nothing there or the table has no such column.
    """
    source = os.fspath(source)
    fs, path, scheme = filesystem(source)
    if any(char in path for char in "*?["):
        found = _glob(fs, path)
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            found = [item.path for item in fs.get_file_info(selector) if item.type == pafs.FileType.File
                     and item.path.lower().endswith(IMAGE_SUFFIXES) and not _hidden(item.path, path)]
        elif info.type == pafs.FileType.File and suffix(path) in TABLE_SUFFIXES:
            return sorted(set(_read_table(fs, path, scheme, path_column)))
        elif info.type == pafs.FileType.File:
            found = [path]
        else:
            raise CaptionerError(f"{source} is not a folder, a glob pattern, a table or a file")
    if not found:
        raise CaptionerError(f"no images found in {source}")
    return sorted({scheme + item for item in found})


def suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith(".") for part in os.path.relpath(path, root).replace(os.sep, "/").split("/"))


def _glob(fs: pafs.FileSystem, pattern: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        return [path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path)]
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(char in part for char in "*?["))
    base = "/".join(parts[:fixed])
    listing = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return [item.path for item in listing if item.type == pafs.FileType.File
            and fnmatch.fnmatchcase(item.path, pattern.replace("**/", "*").replace("**", "*"))]


def _read_table(fs: pafs.FileSystem, path: str, scheme: str, column: str) -> list[str]:
    kind = TABLE_SUFFIXES[suffix(path)]
    with fs.open_input_file(path) as handle:
        if kind == "csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(handle, convert_options=pacsv.ConvertOptions(
                column_types={column: pa.string()}))
        elif kind == "json":
            import pyarrow.json as pajson

            table = pajson.read_json(handle)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(handle)
    if column not in table.column_names:
        raise CaptionerError(f"{scheme}{path} has no column {column!r} (it has: {', '.join(table.column_names)}); "
                             f"choose the path column with --path-column")
    folder = posixpath.dirname(path) if scheme else os.path.dirname(path)
    paths = []
    for value in table.column(column).to_pylist():
        if value is None or not str(value).strip():
            continue
        value = str(value).strip()
        if "://" in value:
            paths.append(value)
        elif scheme:
            paths.append(scheme + (value.lstrip("/") if value.startswith("/") else posixpath.join(folder, value)))
        else:
            paths.append(os.path.normpath(os.path.join(folder, os.path.expanduser(value))))
    if not paths:
        raise CaptionerError(f"{scheme}{path} lists no paths in column {column!r}")
    return paths
