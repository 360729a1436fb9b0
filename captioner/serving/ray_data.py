"""Caption a whole collection of images on a Ray cluster with Ray Data.

    caption_dataset("photos/", "captions/")                      # a local cluster on this machine
    caption_dataset("s3://bucket/shop/*.jpg", "s3://bucket/alt-text/", address="auto")

The input paths are listed (or read from a table) on the driver, streamed through an actor pool
(``map_batches`` with ``ActorPoolStrategy``: each actor loads the model once and captions batches
with ``Captioner.pipeline.caption_each``, decoding images in threads beside the forward pass), and the driver
writes the results in parts of ``rows_per_part`` rows. A part is written under a temporary name and
then renamed, so a job that is killed leaves only complete parts; ``resume=True`` skips the inputs
already in them, so a killed job resumed ends with every input exactly once.

Rows (Parquet or JSON Lines): ``path``, ``caption``, ``score``, ``confidence``, ``candidates``,
``words``, ``top_classes``, ``model``, ``error``: the library's result schema with the input's path.
A file that is not a usable image gets a row with ``error`` set; the job goes on.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
import posixpath
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no calls home

import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402

from captioner.core.backends.choice import requested_backend, requested_precision  # noqa: E402
from captioner.core.errors import CaptionerError  # noqa: E402
from captioner.core.images.decode import MAX_IMAGE_BYTES  # noqa: E402
from captioner.core.options import DecodeOptions  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ico", ".ppm", ".avif")
TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet",
                  ".pq": "parquet"}
FORMATS = ("parquet", "jsonl")
ROWS_PER_PART = 1000
MAX_BLOCKS = 100_000  # input blocks; a block is a whole number of batches

_WORD = pa.struct([("word", pa.string()), ("probability", pa.float64())])
_CANDIDATE = pa.struct([("caption", pa.string()), ("score", pa.float64()), ("confidence", pa.float64()),
                        ("words", pa.list_(_WORD))])
_CLASS = pa.struct([("label", pa.string()), ("probability", pa.float64())])
SCHEMA = pa.schema([("path", pa.string()), ("caption", pa.string()), ("score", pa.float64()),
                    ("confidence", pa.float64()), ("candidates", pa.list_(_CANDIDATE)), ("words", pa.list_(_WORD)),
                    ("top_classes", pa.list_(_CLASS)), ("model", pa.string()), ("error", pa.string())])


@dataclass(frozen=True)
class DatasetRun:
    """What a ``caption_dataset`` call did."""

    out: str
    inputs: int  # inputs found in the source
    skipped: int  # already in OUT (resume)
    captioned: int  # rows the model workers produced in this call
    failed: int  # of those, rows with an error
    parts: int  # part files written in this call
    workers: int
    gpus_per_worker: float
    startup_seconds: float  # connecting to or starting Ray
    seconds: float  # the whole call
    backends: tuple[str, ...] = ()  # the backends the workers ran ("torch", "onnx")
    precisions: tuple[str, ...] = ()  # the encoder precisions they ran ("fp32", "int8")

    def summary(self) -> str:
        done = f"captioned {self.captioned - self.failed} of {self.captioned} images"
        if self.failed:
            done += f" ({self.failed} could not be read: see the error column)"
        if self.skipped:
            done += f"; {self.skipped} already in {self.out} were skipped"
        backends = f" ({'/'.join(self.backends)} backend)" if self.backends else ""
        if "int8" in self.precisions:
            backends = backends.replace(" backend)", f" backend, {'/'.join(self.precisions)} encoder)")
        return f"{done}{backends}; wrote {self.parts} part file(s) to {self.out} in {self.seconds:.1f} s"


# --- where the inputs are ---------------------------------------------------------------------

def _filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
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
    fs, path, scheme = _filesystem(source)
    if any(char in path for char in "*?["):
        found = _glob(fs, path)
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            found = [item.path for item in fs.get_file_info(selector) if item.type == pafs.FileType.File
                     and item.path.lower().endswith(IMAGE_SUFFIXES) and not _hidden(item.path, path)]
        elif info.type == pafs.FileType.File and _suffix(path) in TABLE_SUFFIXES:
            return sorted(set(_read_table(fs, path, scheme, path_column)))
        elif info.type == pafs.FileType.File:
            found = [path]
        else:
            raise CaptionerError(f"{source} is not a folder, a glob pattern, a table or a file")
    if not found:
        raise CaptionerError(f"no images found in {source}")
    return sorted({scheme + item for item in found})


def _suffix(path: str) -> str:
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
    kind = TABLE_SUFFIXES[_suffix(path)]
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


# --- the output: complete parts only ----------------------------------------------------------

def output_format(out: str, fmt: str | None = None) -> str:
    """``fmt``, else ``jsonl`` when OUT ends in .jsonl or .json, else ``parquet``."""
    if fmt is None:
        return "jsonl" if _suffix(out.rstrip("/")) in (".jsonl", ".json", ".ndjson") else "parquet"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


class PartWriter:
    """Writes rows to ``part-*.parquet`` / ``part-*.jsonl`` files in the folder OUT, each under a
    temporary name first and then renamed, so readers and ``resume`` only ever see complete parts."""

    def __init__(self, out: str, fmt: str):
        self.fs, self.root, self.scheme = _filesystem(out)
        self.fmt, self.run = fmt, uuid.uuid4().hex[:8]
        self.written = 0
        self.fs.create_dir(self.root, recursive=True)

    @property
    def suffix(self) -> str:
        return "." + self.fmt

    def parts(self) -> list[str]:
        """The complete part files in OUT."""
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
        """The ``path`` of every row in OUT's complete parts."""
        done: set[str] = set()
        for part in self.parts():
            done.update(value for value in _read_part(self.fs, part, self.fmt) if value is not None)
        return done

    def write(self, rows: Sequence[dict[str, Any]]) -> str:
        name = posixpath.join(self.root, f"part-{self.run}-{self.written:06d}{self.suffix}")
        temporary = name.replace("/part-", "/.tmp-part-", 1) if "/part-" in name else name + ".tmp"
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open_output_stream(temporary) as handle:
                pq.write_table(pa.Table.from_pylist(list(rows), schema=SCHEMA), handle)
        else:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            with self.fs.open_output_stream(temporary) as handle:
                handle.write(text.encode("utf-8"))
        self.fs.move(temporary, name)  # a rename on local disks: the part appears whole or not at all
        self.written += 1
        return self.scheme + name


def _parts(fs: pafs.FileSystem, root: str, fmt: str) -> list[str]:
    listing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(item.path for item in listing if item.type == pafs.FileType.File
                  and posixpath.basename(item.path).startswith("part-") and item.path.endswith("." + fmt))


def _read_part(fs: pafs.FileSystem, path: str, fmt: str) -> list[str | None]:
    with fs.open_input_file(path) as handle:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(handle, columns=["path"]).column("path").to_pylist()
        return [json.loads(line).get("path") for line in handle.read().decode("utf-8").splitlines() if line.strip()]


def to_row(path: str, result: dict[str, Any]) -> dict[str, Any]:
    """One output row: the input's path and the library's result fields."""
    candidates = result.get("candidates") or []
    best = candidates[0] if candidates else {}
    return {"path": path, "caption": result.get("caption"), "score": best.get("score"),
            "confidence": best.get("confidence"), "candidates": result.get("candidates"),
            "words": result.get("words"), "top_classes": result.get("top_classes"),
            "model": result.get("model"), "error": result.get("error")}


# --- the model workers ------------------------------------------------------------------------

class CaptionWorker:
    """A Ray Data actor: loads the model once, then captions batches of paths."""

    def __init__(self, model: str | None, device: str, options: DecodeOptions, batch_size: int, threads: int,
                 backend: str | None = None, precision: str | None = None):
        import torch

        from captioner.core.inference import load_captioner

        torch.set_num_threads(max(1, threads))
        self.captioner = load_captioner(model, device, backend, precision)
        self.options, self.batch_size = options, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        paths = [str(path) for path in batch["path"]]
        results = self.captioner.pipeline.caption_each([_open_source(path) for path in paths], self.options,
                                                       names=paths, batch_size=self.batch_size)
        return {"path": paths, "result": [json.dumps(result.to_dict(), ensure_ascii=False) for result in results],
                "backend": [self.captioner.backend] * len(paths),
                "precision": [self.captioner.precision] * len(paths)}


def _open_source(path: str) -> str | bytes | Exception:
    """A local path as is (the loader reads and checks it); another filesystem's file as its bytes."""
    if "://" not in path or path.startswith("file://"):
        return path[len("file://"):] if path.startswith("file://") else path
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except (OSError, ValueError) as error:
        return OSError(f"cannot read {path}: {error}")
    return data  # the loader refuses an oversized one with its own message


# --- the job ----------------------------------------------------------------------------------

def caption_dataset(source: str | os.PathLike, out: str | os.PathLike, *, address: str | None = None,
                    workers: int | None = None, gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                    batch_size: int = 8, model: str | None = None, options: DecodeOptions = DecodeOptions(),
                    resume: bool = False, path_column: str = "path", fmt: str | None = None,
                    rows_per_part: int = ROWS_PER_PART, backend: str | None = None,
                    precision: str | None = None) -> DatasetRun:
    """Caption every image ``source`` names (see ``list_inputs``) and write one row per input to the
    folder ``out`` (Parquet, or JSON Lines when ``fmt="jsonl"`` or OUT ends in ``.jsonl``).

    ``address``: a running cluster (``ray://host:10001``, ``auto``), or None for a local one (which is
    shut down afterwards); when Ray is already initialised in this process, that cluster is used.
    ``workers``: model actors (default: the cluster's GPUs, else its CPUs, over the per-worker share).
    ``gpus_per_worker``: default 1 when the cluster has GPUs, else 0; asking for more than the
    cluster has is refused (Ray would wait for them forever). ``resume``: skip inputs already in OUT;
    without it, an OUT that already holds parts is refused. ``backend``: each worker's
    ``load_captioner`` backend (``auto``, ``torch``, ``onnx``; None: the workers' ``$CAPTIONER_BACKEND``,
    else ``auto``). ``precision``: each worker's encoder precision on the onnx backend (``auto``, ``fp32``,
    ``int8``; None: the workers' ``$CAPTIONER_PRECISION``, else ``auto``). Raises ``CaptionerError`` /
    ``ValueError`` for bad arguments before any image is read.
    """
    started = time.perf_counter()
    source, out = os.fspath(source), os.fspath(out)
    options.resolved(200)  # settings checked before anything starts (max_length again against the model)
    if backend is not None:
        backend = requested_backend(backend)  # an unknown name is refused here, not in every worker
    if precision is not None:
        precision = requested_precision(precision)
    for name, value in (("batch_size", batch_size), ("rows_per_part", rows_per_part)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number of at least 1, got {workers!r}")
    if cpus_per_worker <= 0 or (gpus_per_worker is not None and gpus_per_worker < 0):
        raise ValueError("cpus_per_worker must be above 0 and gpus_per_worker at least 0")
    inputs = list_inputs(source, path_column)
    writer = PartWriter(out, output_format(out, fmt))
    done = writer.done_paths()
    if done and not resume:
        raise CaptionerError(f"{out} already holds results ({len(done)} rows); pass --resume to caption only "
                             f"the inputs not in it, or choose another folder")
    if resume:
        writer.remove_temporary()  # a resumed job is OUT's only writer: what a stopped one left half-written goes
    todo = [path for path in inputs if path not in done]
    if not todo:  # nothing left: no cluster, no model
        return DatasetRun(out, len(inputs), len(inputs), 0, 0, 0, 0, 0.0, 0.0, time.perf_counter() - started)

    own_cluster = not ray.is_initialized()
    if own_cluster:
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 **({} if address else {"object_store_memory": _local_object_store()}))
    startup = time.perf_counter() - started
    try:
        resources = ray.cluster_resources()
        gpus_there, cpus_there = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        gpus = (1.0 if gpus_there else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
        if gpus > gpus_there:
            raise CaptionerError(f"gpus_per_worker is {gpus:g} but the cluster has {gpus_there:g} GPUs; "
                                 f"use --gpus-per-worker 0 to caption on CPUs")
        if backend == "onnx" and gpus:
            raise CaptionerError("the onnx backend runs on the CPU: use --gpus-per-worker 0 or --backend torch")
        if precision == "int8" and gpus:
            raise CaptionerError("--precision int8 runs on the CPU (the onnx backend): use --gpus-per-worker 0")
        count = workers or max(1, int(gpus_there // gpus) if gpus else int(cpus_there // cpus_per_worker))
        count = min(count, math.ceil(len(todo) / batch_size))
        # Blocks of whole batches (at most MAX_BLOCKS of them), as Arrow slices: cheap for millions of paths.
        block_rows = batch_size * max(1, math.ceil(len(todo) / batch_size / MAX_BLOCKS))
        paths = pa.table({"path": pa.array(todo, pa.string())})
        dataset = ray.data.from_arrow([paths.slice(start, block_rows) for start in range(0, len(todo), block_rows)])
        dataset = dataset.map_batches(
            CaptionWorker, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=count), num_cpus=cpus_per_worker, num_gpus=gpus or None,
            fn_constructor_kwargs={"model": model, "device": "cuda" if gpus else "cpu", "options": options,
                                   "batch_size": batch_size, "threads": int(max(1, cpus_per_worker)),
                                   "backend": backend, "precision": precision})
        captioned = failures = 0
        backends: set[str] = set()
        precisions: set[str] = set()
        for batch in dataset.iter_batches(batch_size=rows_per_part, batch_format="numpy"):
            rows = [to_row(str(path), json.loads(result)) for path, result in zip(batch["path"], batch["result"])]
            backends.update(str(name) for name in batch["backend"])
            precisions.update(str(name) for name in batch["precision"])
            writer.write(rows)
            captioned += len(rows)
            failures += sum(1 for row in rows if row["error"] is not None)
    finally:
        if own_cluster:
            ray.shutdown()
    return DatasetRun(out, len(inputs), len(inputs) - len(todo), captioned, failures, writer.written, count, gpus,
                      startup, time.perf_counter() - started, tuple(sorted(backends)),
                      tuple(sorted(precisions)))


def _local_object_store() -> int:
    """A modest object store for a local cluster: rows here are paths and short strings."""
    return 500 * 1024 * 1024


def read_results(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a ``caption_dataset`` OUT folder (its complete parts), in part order."""
    fs, root, _ = _filesystem(os.fspath(out))
    rows: list[dict[str, Any]] = []
    for fmt in FORMATS:
        for part in _parts(fs, root, fmt):
            with fs.open_input_file(part) as handle:
                if fmt == "parquet":
                    import pyarrow.parquet as pq

                    rows += pq.read_table(handle).to_pylist()
                else:
                    rows += [json.loads(line) for line in handle.read().decode("utf-8").splitlines() if line.strip()]
    return rows
