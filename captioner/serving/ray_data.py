"""Caption a whole collection of images on a Ray cluster with Ray Data.

    caption_dataset("photos/", "alt-text.jsonl")                  # a local cluster on this machine
    caption_dataset("s3://bucket/shop/*.jpg", "s3://bucket/alt-text/", address="auto")

The input paths are listed (or read from a table) on the driver (``dataset_inputs``), streamed
through an actor pool (``map_batches`` with ``ActorPoolStrategy``: each actor loads the model once
and captions batches with ``Captioner.pipeline.caption_each``, decoding images in threads beside the forward
pass), and the driver writes the results in complete parts (``dataset_outputs``): a job that is
stopped leaves only complete parts, and ``resume=True`` skips the inputs already in them, so a
stopped job resumed ends with every input exactly once. A file target (``.jsonl``, ``.csv``,
``.parquet``) is written once all parts are in.

Rows (Parquet or JSON Lines): ``path``, ``caption``, ``confidence``, ``calibrated``, ``score``,
``candidates``, ``words``, ``top_classes``, ``model``, ``error``: the library's result schema with the
input's path (and the best candidate's ``score``).
A file that is not a usable image gets a row with ``error`` set; the job goes on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
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
from captioner.serving.dataset_inputs import list_inputs  # noqa: E402
from captioner.serving.dataset_outputs import (  # noqa: E402
    PartWriter,
    check_file_is_new,
    output_for,
    read_results,
    to_row,
)

ROWS_PER_PART = 1000
MAX_BLOCKS = 100_000  # input blocks; a block is a whole number of batches
LOCAL_OBJECT_STORE_BYTES = 500 * 1024 * 1024  # a local cluster's: rows here are paths and short strings

__all__ = ["DatasetRun", "caption_dataset", "list_inputs", "read_results"]


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
    file_rows: int | None = None  # rows in the file written (a file target), else None
    precisions: tuple[str, ...] = ()  # the encoder precisions they ran ("fp32", "int8")

    def summary(self) -> str:
        done = f"captioned {self.captioned - self.failed} of {self.captioned} images"
        if self.failed:
            done += f" ({self.failed} could not be read: see the error column)"
        if self.skipped:
            done += f"; {self.skipped} done by an earlier run were kept"
        backends = f" ({'/'.join(self.backends)} backend)" if self.backends else ""
        if "int8" in self.precisions:
            backends = backends.replace(" backend)", f" backend, {'/'.join(self.precisions)} encoder)")
        wrote = (f"wrote {self.out} ({self.file_rows} rows)" if self.file_rows is not None
                 else f"wrote {self.parts} part file(s) to {self.out}")
        return f"{done}{backends}; {wrote} in {self.seconds:.1f} s"


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
                    rows_per_part: int = ROWS_PER_PART, backend: str | None = None, precision: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> DatasetRun:
    """Caption every image ``source`` names (see ``list_inputs``) and write one row per input to
    ``out``: one file when it ends in ``.jsonl``, ``.csv`` or ``.parquet`` (an existing file is
    refused), else a folder of parts (Parquet, or JSON Lines with ``fmt="jsonl"``).

    ``address``: a running cluster (``ray://host:10001``, ``auto``), or None for a local one (which is
    shut down afterwards); when Ray is already initialised in this process, that cluster is used.
    ``workers``: model actors (default: the cluster's GPUs, else its CPUs, over the per-worker share).
    ``gpus_per_worker``: default 1 when the cluster has GPUs, else 0; asking for more than the
    cluster has is refused (Ray would wait for them forever). ``resume``: keep the rows of a stopped
    run and caption only the rest; without it, results already there are refused. ``backend``: each
    worker's ``load_captioner`` backend (``auto``, ``torch``, ``onnx``; None: the workers'
    ``$CAPTIONER_BACKEND``, else ``auto``). ``precision``: each worker's encoder precision on the onnx
    backend (``auto``, ``fp32``, ``int8``; None: the workers' ``$CAPTIONER_PRECISION``, else ``auto``).
    ``progress(done, total)`` runs as rows come in (``total``
    counts this run's inputs). Raises ``CaptionerError`` / ``ValueError`` for bad arguments before
    any image is read.
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
    output = output_for(out, fmt)
    check_file_is_new(output)
    inputs = list_inputs(source, path_column)
    writer = PartWriter(output)
    done = writer.done_paths()
    if done and not resume:
        where = f"a stopped run's {len(done)} rows for {out} (in {output.parts_location})" if output.file \
            else f"{out} already holds results ({len(done)} rows)"
        raise CaptionerError(f"{where}: pass --resume to caption only the inputs not in it, or choose another "
                             f"{'file' if output.file else 'folder'}")
    if resume:
        writer.remove_temporary()  # a resumed job is OUT's only writer: what a stopped one left half-written goes
    todo = [path for path in inputs if path not in done]
    count, gpus, captioned, failures, startup, backends, precisions = 0, 0.0, 0, 0, 0.0, set(), set()
    if todo:
        own_cluster = not ray.is_initialized()
        if own_cluster:
            ray.init(address=address, include_dashboard=False,
                     **({} if address else {"object_store_memory": LOCAL_OBJECT_STORE_BYTES}))
        startup = time.perf_counter() - started
        try:
            count, gpus = _workers(workers, gpus_per_worker, cpus_per_worker, backend, precision, len(todo),
                                   batch_size)
            dataset = _captions(todo, count, gpus, cpus_per_worker, batch_size, model, options, backend, precision)
            if progress is not None:
                progress(0, len(todo))
            rows: list[dict[str, Any]] = []
            for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
                rows += [to_row(str(path), json.loads(result)) for path, result in zip(batch["path"], batch["result"])]
                backends.update(str(name) for name in batch["backend"])
                precisions.update(str(name) for name in batch["precision"])
                while len(rows) >= rows_per_part:
                    captioned, failures = _write(writer, rows[:rows_per_part], captioned, failures)
                    rows = rows[rows_per_part:]
                if progress is not None:
                    progress(captioned + len(rows), len(todo))
            if rows:
                captioned, failures = _write(writer, rows, captioned, failures)
            del dataset
        finally:
            if own_cluster:
                ray.shutdown()
    file_rows = writer.finish() if output.file else None
    return DatasetRun(out, len(inputs), len(inputs) - len(todo), captioned, failures, writer.written, count, gpus,
                      startup, time.perf_counter() - started, tuple(sorted(backends)), file_rows,
                      tuple(sorted(precisions)))


def _write(writer: PartWriter, rows: list[dict[str, Any]], captioned: int, failures: int) -> tuple[int, int]:
    writer.write(rows)
    return captioned + len(rows), failures + sum(1 for row in rows if row["error"] is not None)


def _workers(workers: int | None, gpus_per_worker: float | None, cpus_per_worker: float, backend: str | None,
             precision: str | None, todo: int, batch_size: int) -> tuple[int, float]:
    """(model actors, GPUs each) for the connected cluster; refuses GPUs it does not have."""
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
    return min(count, math.ceil(todo / batch_size)), gpus


def _captions(todo: list[str], count: int, gpus: float, cpus_per_worker: float, batch_size: int,
              model: str | None, options: DecodeOptions, backend: str | None,
              precision: str | None) -> ray.data.Dataset:
    """The dataset of ``todo``'s results, computed by ``count`` model actors as it is read."""
    # Blocks of whole batches (at most MAX_BLOCKS of them), as Arrow slices: cheap for millions of paths.
    block_rows = batch_size * max(1, math.ceil(len(todo) / batch_size / MAX_BLOCKS))
    paths = pa.table({"path": pa.array(todo, pa.string())})
    dataset = ray.data.from_arrow([paths.slice(start, block_rows) for start in range(0, len(todo), block_rows)])
    return dataset.map_batches(
        CaptionWorker, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=count), num_cpus=cpus_per_worker, num_gpus=gpus or None,
        fn_constructor_kwargs={"model": model, "device": "cuda" if gpus else "cpu", "options": options,
                               "batch_size": batch_size, "threads": int(max(1, cpus_per_worker)),
                               "backend": backend, "precision": precision})
