"""Where a ``caption-dataset`` job writes: ONE file (``.jsonl``, ``.csv``, ``.parquet``, by suffix) or a
folder of parts.

Rows are written in parts of a few hundred or thousand rows, each under a temporary name and then
renamed, so a job that is stopped leaves only complete parts and ``resume`` skips the inputs in them.
A folder target holds the parts themselves (``part-*.parquet`` or ``part-*.jsonl``). A file target
keeps them in a hidden folder beside it (``.NAME.parts/``) until the job ends; they are then joined
into the file (written under a temporary name and renamed: the file appears whole or not at all) and
the hidden folder is removed. An existing file is never written over.

Columns: ``path``, ``caption``, ``score``, ``confidence``, ``candidates``, ``words``,
``top_classes``, ``model``, ``error``: the library's result schema with the input's path. In CSV
the nested columns hold JSON text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from captioner.core.errors import CaptionerError
from captioner.core.files import spreadsheet_safe
from captioner.serving.dataset_inputs import filesystem, suffix

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PART_FORMATS = ("parquet", "jsonl")
NESTED = ("candidates", "words", "top_classes")

_WORD = pa.struct([("word", pa.string()), ("probability", pa.float64())])
_MENTION = pa.struct([("phrase", pa.string()), ("probability", pa.float64())])
_CANDIDATE = pa.struct([("caption", pa.string()), ("confidence", pa.float64()), ("calibrated", pa.bool_()),
                        ("score", pa.float64()), ("decoded", pa.string()), ("words", pa.list_(_WORD)),
                        ("mentions", pa.list_(_MENTION)), ("cut", pa.bool_())])
_CLASS = pa.struct([("label", pa.string()), ("probability", pa.float64())])
SCHEMA = pa.schema([("path", pa.string()), ("caption", pa.string()), ("confidence", pa.float64()),
                    ("calibrated", pa.bool_()), ("score", pa.float64()), ("candidates", pa.list_(_CANDIDATE)),
                    ("words", pa.list_(_WORD)), ("top_classes", pa.list_(_CLASS)), ("model", pa.string()),
                    ("error", pa.string())])


def to_row(path: str, result: dict[str, Any]) -> dict[str, Any]:
    """One output row: the input's path and the library's result fields."""
    candidates = result.get("candidates") or []
    best = candidates[0] if candidates else {}
    return {"path": path, "caption": result.get("caption"), "confidence": result.get("confidence"),
            "calibrated": result.get("calibrated"), "score": best.get("score"), "candidates": result.get("candidates"),
            "words": result.get("words"), "top_classes": result.get("top_classes"),
            "model": result.get("model"), "error": result.get("error")}


@dataclass(frozen=True)
class Output:
    """An output target: ``file`` (one file in ``fmt``: jsonl, csv, parquet) or a folder of parts."""

    location: str  # as given (a path or a URI)
    fmt: str
    file: bool

    @property
    def parts_location(self) -> str:
        """The folder the parts go to: the target itself, or a hidden folder beside the file."""
        if not self.file:
            return self.location
        folder, name = posixpath.split(self.location.rstrip("/"))
        return posixpath.join(folder, f".{name}.parts")

    @property
    def part_format(self) -> str:
        return "parquet" if self.fmt == "parquet" else "jsonl"


def output_for(out: str, fmt: str | None = None) -> Output:
    """The target ``out`` names: a file when it ends in .jsonl, .ndjson, .csv, .parquet or .pq and is
    not an existing folder; else a folder of parts (``fmt``: parquet or jsonl; by default the format
    of the parts already in it, else jsonl when its name ends in .jsonl, else parquet). Raises
    ``ValueError`` for a format that contradicts the file's suffix."""
    fs, path, _ = filesystem(out)
    is_folder = fs.get_file_info(path).type == pafs.FileType.Directory
    kind = FILE_FORMATS.get(suffix(path.rstrip("/")))
    if kind is not None and not is_folder and not out.endswith("/"):
        if fmt is not None and fmt != kind:
            raise ValueError(f"--format {fmt} does not match the file name {out} (a .{kind} file)")
        return Output(out, kind, True)
    if fmt is None:  # the format of the parts already there, else by the folder's name
        present = [name for name in PART_FORMATS if is_folder and _parts(fs, path, name)]
        fmt = present[0] if present else "jsonl" if kind == "jsonl" else "parquet"
    if fmt not in PART_FORMATS:
        raise ValueError(f"a folder of parts holds {' or '.join(PART_FORMATS)} files, not {fmt}; "
                         f"name a .{fmt} file to get one {fmt} file")
    return Output(out, fmt, False)


def check_file_is_new(output: Output) -> None:
    """Refuse a file target that exists (``CaptionerError``): results never replace a file."""
    if not output.file:
        return
    fs, path, _ = filesystem(output.location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        raise CaptionerError(f"{output.location} already exists: choose another name or remove it first "
                             f"(results never replace a file)")


class PartWriter:
    """Writes rows to ``part-*`` files in ``output.parts_location``, each under a temporary name first
    and then renamed, so readers and ``resume`` only ever see complete parts."""

    def __init__(self, output: Output):
        self.output = output
        self.fs, self.root, self.scheme = filesystem(output.parts_location)
        self.fmt, self.run = output.part_format, uuid.uuid4().hex[:8]
        self.written = 0

    def parts(self) -> list[str]:
        """The complete part files."""
        return _parts(self.fs, self.root, self.fmt)

    def remove_temporary(self) -> int:
        """Delete the unfinished parts a stopped job left behind; returns how many there were."""
        listing = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        stale = [item.path for item in listing if item.type == pafs.FileType.File
                 and posixpath.basename(item.path).startswith(".tmp-part-")]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def done_paths(self) -> set[str]:
        """The ``path`` of every row in the complete parts."""
        done: set[str] = set()
        for part in self.parts():
            done.update(row["path"] for row in _read_part(self.fs, part, self.fmt, columns=["path"])
                        if row.get("path") is not None)
        return done

    def write(self, rows: Sequence[dict[str, Any]]) -> str:
        if self.written == 0:
            self.fs.create_dir(self.root, recursive=True)
        name = posixpath.join(self.root, f"part-{self.run}-{self.written:06d}.{self.fmt}")
        temporary = posixpath.join(self.root, ".tmp-" + posixpath.basename(name))
        with self.fs.open_output_stream(temporary) as handle:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(list(rows), schema=SCHEMA), handle)
            else:
                handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
        self.fs.move(temporary, name)  # a rename on local disks: the part appears whole or not at all
        self.written += 1
        return self.scheme + name

    def finish(self) -> int:
        """For a file target: join the parts into the file (under a temporary name, then renamed) and
        remove the parts' folder. Returns the rows written to the file (0 for a folder target)."""
        if not self.output.file:
            return 0
        fs, path, _ = filesystem(self.output.location)
        folder, name = posixpath.split(path)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            rows = _write_file(fs, temporary, self.output.fmt, self._rows())
            fs.move(temporary, path)
        except BaseException:
            if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
                fs.delete_file(temporary)
            raise
        fs.delete_dir(self.root)
        return rows

    def _rows(self) -> Iterator[list[dict[str, Any]]]:
        for part in self.parts():
            yield _read_part(self.fs, part, self.fmt)


def _write_file(fs: pafs.FileSystem, path: str, fmt: str, batches: Iterator[list[dict[str, Any]]]) -> int:
    """Write batches of rows to one file in ``fmt``, streaming; returns the number of rows."""
    count = 0
    with fs.open_output_stream(path) as handle:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(handle, SCHEMA) as writer:
                for rows in batches:
                    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                    count += len(rows)
            return count
        header = fmt == "csv"
        for rows in batches:
            text = _csv_text(rows, header) if fmt == "csv" else "".join(
                json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            handle.write(text.encode("utf-8"))
            count, header = count + len(rows), False
        if count == 0 and fmt == "csv":
            handle.write(_csv_text([], True).encode("utf-8"))
    return count


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(SCHEMA.names)
    for row in rows:
        writer.writerow([json.dumps(row[name], ensure_ascii=False) if name in NESTED and row[name] is not None
                         else spreadsheet_safe(row[name]) for name in SCHEMA.names])
    return buffer.getvalue()


def _parts(fs: pafs.FileSystem, root: str, fmt: str) -> list[str]:
    listing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(item.path for item in listing if item.type == pafs.FileType.File
                  and posixpath.basename(item.path).startswith("part-") and item.path.endswith("." + fmt))


def _read_part(fs: pafs.FileSystem, path: str, fmt: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    with fs.open_input_file(path) as handle:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(handle, columns=columns).to_pylist()
        return [json.loads(line) for line in handle.read().decode("utf-8").splitlines() if line.strip()]


def read_results(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row ``caption_dataset`` wrote to ``out`` (a file, or a folder's complete parts in part
    order); CSV cells come back as text (an empty cell as None), with the nested columns parsed."""
    out = os.fspath(out)
    output = output_for(out)
    fs, path, _ = filesystem(out)
    if not output.file:
        return [row for fmt in PART_FORMATS for part in _parts(fs, path, fmt) for row in _read_part(fs, part, fmt)]
    if output.fmt != "csv":
        return _read_part(fs, path, output.fmt)
    with fs.open_input_file(path) as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read().decode("utf-8"))))
    for row in rows:
        row.update({name: value or None for name, value in row.items()})  # an empty cell: no value
        row.update({name: json.loads(row[name]) if row[name] else None for name in NESTED})
    return rows
