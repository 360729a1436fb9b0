"""Speed and memory of the library and the command line, as Markdown tables of one run's measurements.

    python benchmarks/bench.py            # about 3-5 minutes on 2 CPU cores
    python benchmarks/bench.py --quick    # about a minute, for CI
    python benchmarks/bench.py --model DIR --json results.json
    python benchmarks/bench.py --threads 1 --clock cpu   # steadier on a machine shared with other work
    python benchmarks/bench.py --int8 only               # the fp32 against int8 encoder tables alone

What it measures (medians of interleaved runs, so that a busy machine slows every row alike), for
both backends (torch and, when onnxruntime is installed, ONNX Runtime) alternating in the same run,
each backend in a process of its own (as a user runs one; in a shared process each would slow the
other through its thread pool and caches): warm per-image latency (each timed call right after an
untimed one of the same kind) against the bare encoder forward on the same tensor (the floor);
images/s by batch size; loading (the ONNX backend's first load exports, later loads use the
cached export); the fp32 against the int8 encoder (``int8_tables``: a copy of the model exported with
``export-onnx --int8`` on the real-photo set, its caption check, latency at 1 and 2 threads,
``caption-dataset`` on one worker, cold start); cold start of ``python -m captioner caption`` next to the bare
``import torch, torchvision``; peak memory; and, on the same ResNet-152 weights, the classic
tutorial's own code (``tutorial_reference.py``, ``sample.py``) against this library. ONNX exports go
to a temporary cache, never the user's.
Compare the ratios within one run: absolute times depend on the machine and its load.

The bundled model (``models/default``) is used when it exists; otherwise a stand-in of the
same shape is built (EfficientNet-Lite0 ImageNet weights, random LSTM decoder). The ResNet-152
model is a random-weight stand-in in the tutorial's file layout, converted with ``import_legacy``.
A random decoder never emits ``<end>``, so its captions run to the maximum length: the decoding
rows are a worst case, and the rows capped at a typical caption's length show the usual cost.

On a machine where other processes compete for the cores, torch's default of one thread per
core can make each operator wait for a descheduled thread (seen here: 2 threads 10-30x slower
than 1); ``--threads 1 --clock cpu`` then gives ratios that still mean something.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from captioner.core.model.config import ModelConfig  # noqa: E402
from captioner.core.model.encoders import load_pretrained_weights  # noqa: E402
from captioner.core.images.decode import load_image  # noqa: E402
from captioner.core.repository.legacy import import_legacy  # noqa: E402
from captioner.core.model.network import ShowAndTell  # noqa: E402
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, load_model, save_model  # noqa: E402
from captioner.core.inference import Captioner  # noqa: E402
from captioner.core.backends.choice import onnxruntime_available  # noqa: E402
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary  # noqa: E402
from tables import Table, add_clock_options, chosen_clock, cpu_name  # noqa: E402

EXAMPLES = ROOT / "examples"
# In-process timings use this clock: wall time by default; ``--clock cpu`` (process CPU time) keeps
# single-threaded (``--threads 1``) ratios steady on a machine that other work keeps busy.
clock = time.perf_counter
TUTORIAL_VOCAB_SIZE = 9956  # the tutorial's published COCO vocabulary
IDLE_GAP_S = 0.02  # between timed calls (see ``interleaved``)
TYPICAL_LENGTH = 12  # tokens: a COCO caption averages about 10.5 words, plus <end>


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def interleaved(functions: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Call each function once per round (round index as argument), rotating the order; each returns
    the seconds of its own timed call (``warm`` for one run here, ``BackendProcess`` for one run in a
    backend's process). One untimed round first; an idle gap before each call, so that the thread
    pools a call leaves spinning are not charged to the next."""
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(IDLE_GAP_S)
            seconds = functions[name](r)
            if r:
                times[name].append(seconds)
    return times


def warm(function: Callable[[int], object], timer: Callable[[], float] | None = None) -> Callable[[int], float]:
    """``function`` timed warm: right after an untimed call of itself, as the second of two
    back-to-back requests."""
    def run(r: int) -> float:
        function(r)
        now = timer or clock
        start = now()
        function(r)
        return now() - start
    return run


class BackendProcess:
    """One backend's captioner in a process of its own, timed on request (``timed``).

    Each backend is measured as it runs alone, as a user runs it: in one process, the other
    backend's caches and thread pools (torch's OpenMP threads, ONNX Runtime's) would slow it in
    ways no user sees. The rounds still alternate between the processes, so a busy machine slows
    both alike."""

    def __init__(self, source: str | None, backend: str, images: list[Path], threads: int | None, clock_name: str,
                 precision: str = "fp32"):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve_backend, daemon=True, args=(
            child, source, backend, [str(p) for p in images], threads, clock_name, precision))
        self.process.start()
        self.backbone = self._receive()

    def timed(self, what: str, *args: object) -> tuple[float, int | None]:
        """(seconds, words) of one ``what`` (``floor``, ``caption``, ``batch``) in the backend's process."""
        self.connection.send((what, args))
        return self._receive()

    def _receive(self):
        answer = self.connection.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        self.connection.send(None)
        self.process.join(60)


def _serve_backend(connection, source: str | None, backend: str, images: list[str], threads: int | None,
                   clock_name: str, precision: str) -> None:
    """A ``BackendProcess``: answers each request with the seconds of one warm run (after an untimed one,
    except ``batch``, whose long calls are timed as they come)."""
    try:
        if threads:
            torch.set_num_threads(threads)
        timer = time.process_time if clock_name == "cpu" else time.perf_counter
        captioner = fresh_captioner(source, backend, precision)
        pixels = [captioner.pipeline.preprocess(load_image(p)).unsqueeze(0) for p in images]
        count = len(images)
        actions = {"floor": lambda i: captioner.pipeline.features(pixels[i % count]),
                   "caption": lambda i, beam, length: captioner(images[i % count], beam_size=beam,
                                                                        max_length=length),
                   "batch": lambda size: captioner([images[j % count] for j in range(size)], batch_size=size)}
        connection.send(captioner.config.backbone)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        connection.send(error)
        return
    while (request := connection.recv()) is not None:
        what, args = request
        try:
            if what != "batch":
                actions[what](*args)
            start = timer()
            result = actions[what](*args)
            connection.send((timer() - start, len(result.words) if what == "caption" else None))
        except BaseException as error:  # noqa: BLE001
            connection.send(error)


# Runs the measured command as its own child and reports that child's wall time, CPU time and peak RSS.
# The extra process matters: a child's ru_maxrss starts from what its parent held when it forked,
# so a command forked straight from this (large) benchmark process would report this process's size.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, out)
"""


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall time (s), CPU time (s) and peak RSS (MiB) of one process, from its start to its exit."""
    with tempfile.TemporaryDirectory() as tmp:
        report, log = Path(tmp) / "report.json", Path(tmp) / "stderr.txt"
        with open(log, "wb") as err:
            subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *command], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=err, check=False)
        result = json.loads(report.read_text()) if report.is_file() else {"code": "no report"}
        if result["code"] != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result['code']}):\n{log.read_text()[-2000:]}")
        return result["wall"], result["cpu"], result["maxrss_kib"] / 1024


# ---------------------------------------------------------------- models


def bundled_or_stand_in(model: str | None, tmp: Path) -> tuple[str | None, str]:
    """(source for load_model / --model, how to describe it)."""
    if model:
        return model, f"model {model}"
    if (BUNDLED_MODEL_DIR / "config.json").is_file():
        return None, "bundled model (models/default)"
    torch.manual_seed(0)
    vocab = Vocabulary([*SPECIAL_TOKENS, *(f"word{i}" for i in range(1500 - 4))])
    config = ModelConfig(backbone="efficientnet-lite0", encoder_output="class_log_probs", vocab_size=len(vocab),
                         embed_size=256, hidden_size=512, image_size=224, resize=256,
                         mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    stand_in = ShowAndTell(config)
    load_pretrained_weights(stand_in.encoder.backbone, config.backbone)
    out = save_model(stand_in.eval(), vocab, tmp / "lite0-stand-in")
    return str(out), ("stand-in for the bundled model (models/default not built yet): EfficientNet-Lite0 "
                      "ImageNet weights, random decoder, embed 256, hidden 512, vocab 1500")


def tutorial_stand_in(tmp: Path) -> dict[str, Path]:
    """Random-weight files in the tutorial's layout (ResNet-152, embed 256, hidden 512, vocab 9956),
    and their conversion with ``import_legacy``."""
    from build_vocab import Vocabulary as TutorialVocabulary
    from tutorial_reference import DecoderRNN, EncoderCNN

    torch.manual_seed(0)
    encoder, decoder = EncoderCNN(256), DecoderRNN(256, 512, TUTORIAL_VOCAB_SIZE, 1)
    with torch.no_grad():  # real running statistics, as trained weights have
        encoder.bn.running_mean.normal_(0, 0.1)
        encoder.bn.running_var.uniform_(0.5, 1.5)
    files = {"encoder": tmp / "encoder-5-3000.pkl", "decoder": tmp / "decoder-5-3000.pkl", "vocab": tmp / "vocab.pkl"}
    torch.save(encoder.state_dict(), files["encoder"])
    torch.save(decoder.state_dict(), files["decoder"])
    vocab = TutorialVocabulary()
    for word in [*SPECIAL_TOKENS, *(f"word{i}" for i in range(TUTORIAL_VOCAB_SIZE - 4))]:
        vocab.add_word(word)
    files["vocab"].write_bytes(pickle.dumps(vocab))
    files["model"] = import_legacy(files["encoder"], files["decoder"], files["vocab"], tmp / "resnet152-imported")
    return files


def fresh_captioner(source: str | None, backend: str = "torch", precision: str = "fp32") -> Captioner:
    """A newly loaded captioner, as ``load_captioner`` loads it (which would return a cached one):
    with the ONNX backend, torch's backbone is built only if needed (for the export). The ONNX rows
    are fp32 unless ``precision`` says otherwise (``int8_tables`` compares the precisions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an int8 encoder that failed its check, used as asked: reported in the tables
        return Captioner(load_model(source, "cpu", defer_backbone=backend == "onnx"), torch.device("cpu"), backend,
                         precision)




def backends() -> tuple[str, ...]:
    return ("torch", "onnx") if onnxruntime_available() else ("torch",)


def time_loads(source: str | None, table: Table, name: str) -> Callable:
    """Load each backend of a model twice here (the ONNX backend's first load exports, the second
    reuses the cached export); the load times go into ``table``. Returns the model's preprocessing."""
    for backend in backends():
        seconds = []
        for _ in range(2):
            start = clock()
            captioner = fresh_captioner(source, backend)
            seconds.append(clock() - start)
        table.rows.append([name, backend, round(seconds[0], 2), round(seconds[1], 2)])
    return captioner.pipeline.preprocess


def start_workers(source: str | None, images: list[Path], args: argparse.Namespace) -> dict[str, BackendProcess]:
    return {backend: BackendProcess(source, backend, images, args.threads, args.clock) for backend in backends()}


def photos() -> list[Path]:
    """The example photos in colour (the tutorial's ``sample.py`` cannot read grey ones)."""
    from PIL import Image

    found = []
    for path in sorted(EXAMPLES.glob("*.jpg")):
        with Image.open(path) as image:
            if image.mode == "RGB":
                found.append(path)
    return found


# ---------------------------------------------------------------- measurements


def warm_latency(name: str, workers: dict[str, BackendProcess], preprocess: Callable, images: list[Path],
                 rounds: int, tutorial: tuple | None = None) -> Table:
    """Each backend's rows, all measured in the same interleaved rounds, each backend in its own
    process; ``times`` keyed (backend, what). ``preprocess`` is the model's, timed here."""
    words = {}

    def caption(worker, beam, max_length=None):
        def run(r):
            seconds, words[beam, max_length] = worker.timed("caption", r, beam, max_length)
            return seconds
        return run

    functions: dict = {("", "preprocess"): warm(lambda r: preprocess(load_image(images[r % len(images)])))}
    for backend, worker in workers.items():
        functions.update({(backend, "floor"): lambda r, worker=worker: worker.timed("floor", r)[0],
                          (backend, "greedy"): caption(worker, 1), (backend, "beam3"): caption(worker, 3),
                          (backend, "greedy12"): caption(worker, 1, TYPICAL_LENGTH),
                          (backend, "beam3_12"): caption(worker, 3, TYPICAL_LENGTH)})
    if tutorial is not None:
        from tutorial_reference import generate

        encoder, decoder, vocab, transform = tutorial
        functions[("", "tutorial")] = warm(lambda r: generate(str(images[r % len(images)]), encoder, decoder, vocab,
                                                              transform))
    times = {k: statistics.median(v) for k, v in interleaved(functions, rounds).items()}
    table = Table(f"Warm per-image latency, {name} (library, each backend in its own process, median of {rounds} "
                  "rounds, backends alternating)", ["what", "backend", "median ms", "x this backend's encoder forward",
                                                    "x torch", "words"])
    labels = {"floor": "encoder forward only (backbone, preprocessed tensor): the floor",
              "greedy": "`caption(path, beam_size=1)` (greedy)", "beam3": "`caption(path, beam_size=3)`",
              "greedy12": f"greedy, `max_length={TYPICAL_LENGTH}` (a typical caption's length)",
              "beam3_12": f"beam 3, `max_length={TYPICAL_LENGTH}`"}
    counts = {"floor": "", "greedy": words[1, None], "beam3": words[3, None], "greedy12": words[1, TYPICAL_LENGTH],
              "beam3_12": words[3, TYPICAL_LENGTH]}
    table.rows.append(["image file -> tensor (decode, resize, crop, normalise)", "either", _ms(times["", "preprocess"]),
                       round(times["", "preprocess"] / times["torch", "floor"], 2), "", ""])
    for what, label in labels.items():
        for backend in workers:
            table.rows.append([label, backend, _ms(times[backend, what]),
                               round(times[backend, what] / times[backend, "floor"], 2),
                               round(times[backend, what] / times["torch", what], 2), counts[what]])
    if tutorial is not None:
        table.rows.append(["tutorial's own code, warm (load_image + encoder + decoder.sample)", "torch",
                           _ms(times["", "tutorial"]), round(times["", "tutorial"] / times["torch", "floor"], 2),
                           "", ""])
        for backend in workers:
            table.notes.append(f"greedy caption / tutorial's code, {backend}: "
                               f"{times[backend, 'greedy'] / times['', 'tutorial']:.2f}")
    table.times = times
    return table


def throughput(name: str, workers: dict[str, BackendProcess], batch_sizes: list[int], budget_s: float) -> Table:
    """Images/s of ``caption(list)`` (beam 3, the default) at each batch size, backends alternating."""
    table = Table(f"Throughput, {name} (`caption([...])`, beam 3, one batched forward per call, backends "
                  "alternating, each in its own process)", ["batch size", "backend", "calls timed", "ms per call",
                                                            "images/s", "ms per image", "per image vs batch 1",
                                                            "images/s x torch"])
    base: dict[str, float] = {}
    for worker in workers.values():
        worker.timed("batch", 1)  # warm
    for size in batch_sizes:
        times: dict[str, list[float]] = {backend: [] for backend in workers}
        started = time.perf_counter()
        while not times["torch"] or (time.perf_counter() - started < budget_s * len(workers)
                                     and len(times["torch"]) < 20):
            for backend, worker in workers.items():
                time.sleep(IDLE_GAP_S)
                times[backend].append(worker.timed("batch", size)[0])
        for backend in workers:
            per_call = statistics.median(times[backend])
            base.setdefault(backend, per_call / size)
            table.rows.append([size, backend, len(times[backend]), _ms(per_call), round(size / per_call, 2),
                               _ms(per_call / size), round(per_call / size / base[backend], 2),
                               round(statistics.median(times["torch"]) / per_call, 2)])
        table.times.update({(backend, size): statistics.median(times[backend]) for backend in workers})
    return table


def cold_start(commands: dict[str, list[str]], rounds: int, env: dict[str, str],
               first_runs: dict[str, list[str]] | None = None) -> tuple[Table, dict]:
    """Each command ``rounds`` times, interleaved; returns the table and {label: (wall, cpu) medians}.
    ``first_runs`` run once each before the rest (the ONNX backend's first run, which exports)."""
    runs: dict[str, list[tuple[float, float, float]]] = {label: [run_child(command, env)]
                                                         for label, command in (first_runs or {}).items()}
    runs.update({label: [] for label in commands})
    labels = list(commands)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            runs[label].append(run_child(commands[label], env))
    table = Table(f"Cold start: process start to exit (median of {rounds}), CPU time, peak memory",
                  ["command", "wall s", "min wall s", "CPU s (user+sys)", "peak RSS MiB"])
    medians = {}
    for label, results in runs.items():
        wall, cpu = statistics.median(w for w, _, _ in results), statistics.median(c for _, c, _ in results)
        medians[label] = (wall, cpu)
        table.rows.append([label, round(wall, 2), round(min(w for w, _, _ in results), 2), round(cpu, 2),
                           round(max(m for _, _, m in results))])
    return table, medians


def reload_per_call(files: dict[str, Path], images: list[Path], count: int) -> tuple[Table, float]:
    from tutorial_reference import caption_reloading

    start = clock()
    for i in range(count):
        caption_reloading(str(images[i % len(images)]), files["encoder"], files["decoder"], files["vocab"])
    tutorial = clock() - start
    start = clock()
    captioner = fresh_captioner(str(files["model"]))
    loaded = clock() - start
    for i in range(count):
        captioner(images[i % len(images)], beam_size=1)
    ours = clock() - start
    table = Table(f"ResNet-152: {count} captions, reloading everything per call vs loaded once",
                  ["flow", "total s", "s per caption", "x faster than reload-per-call"])
    table.rows = [
        ["tutorial notebook helper: unpickle vocab, build + load both models, caption (every call)",
         round(tutorial, 2), round(tutorial / count, 3), 1.0],
        ["this library, including its one load: `Captioner(load_model(dir))`, then `caption(path, beam_size=1)`",
         round(ours, 2), round(ours / count, 3), round(tutorial / ours, 1)],
        [f"this library, already loaded (as in a running app): the same without the load ({loaded:.2f} s)",
         round(ours - loaded, 2), round((ours - loaded) / count, 3), round(tutorial / (ours - loaded), 1)],
    ]
    return table, tutorial / ours, tutorial / (ours - loaded)


# ---------------------------------------------------------------- int8 encoder

PRECISION_ROWS = {"torch": ("torch", "fp32"), "onnx fp32": ("onnx", "fp32"), "onnx int8": ("onnx", "int8")}


def int8_model(source: str | None, tmp: Path, calibration: str | None) -> tuple[Path, object]:
    """A copy of the model with its int8 encoder exported as ``export-onnx --int8`` does: calibrated
    and checked on ``calibration`` (default: the real-photo set, built now). Returns (the copy, the
    export's agreement)."""
    from captioner.core.backends.calibration import photo_sets
    from captioner.core.backends.int8 import export_int8_to_repo

    if calibration is None:
        subprocess.run([sys.executable, "-m", "captioner.build.photos", str(tmp / "real-photos")], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        calibration = str(tmp / "real-photos" / "photos")
    model = Path(shutil.copytree(Path(source) if source else BUNDLED_MODEL_DIR, tmp / "int8-model"))
    _, agreement = export_int8_to_repo(model, photo_sets(calibration))
    return model, agreement


def int8_tables(source: str | None, images: list[Path], args: argparse.Namespace, tmp: Path, env: dict[str, str]
                ) -> tuple[list[Table], list[list]]:
    """fp32 against int8 encoders (and torch): warm latency at 1 and 2 threads, batch 8 per image,
    `caption-dataset` on one worker, CLI cold start, and the export's caption agreement. Returns the
    tables and rows for the targets table."""
    started = time.perf_counter()
    model, agreement = int8_model(source, tmp, args.calibration)
    built = time.perf_counter() - started
    auto = "onnx int8" if agreement.passed else "onnx fp32"
    check = Table("int8 encoder: the export's check (`export-onnx --int8`), captions from the fp32 and the int8 "
                  "encoder on held-out real photos", ["decoding", "identical captions", "share", "verdict"])
    for decoding, identical in (("greedy", agreement.greedy), ("beam 3", agreement.beam)):
        check.rows.append([decoding, f"{identical} of {agreement.photos}", f"{agreement.rate(identical):.1%}",
                           agreement.verdict])
    check.notes.append(f"{agreement.line()}; built in {built:.0f} s; `--precision auto` runs {auto}")
    tables, targets = [check], []
    rounds = 5 if args.quick else 11
    for threads in (1, 2):
        workers = {name: BackendProcess(str(model), backend, images, threads, args.clock, precision)
                   for name, (backend, precision) in PRECISION_ROWS.items()}

        def caption(worker, beam):
            return lambda r: worker.timed("caption", r, beam, None)[0]

        functions = {}
        for name, worker in workers.items():
            functions.update({(name, "floor"): lambda r, worker=worker: worker.timed("floor", r)[0],
                              (name, "greedy"): caption(worker, 1), (name, "beam3"): caption(worker, 3),
                              (name, "batch8"): lambda r, worker=worker: worker.timed("batch", 8)[0] / 8})
        times = {k: statistics.median(v) for k, v in interleaved(functions, rounds).items()}
        for worker in workers.values():
            worker.close()
        table = Table(f"fp32 against int8 encoder, {threads} thread{'s' if threads > 1 else ''} (each in its own "
                      f"process, median of {rounds} interleaved rounds)",
                      ["what", *PRECISION_ROWS, "int8 / fp32", "int8 / torch", "fp32 / torch"])
        for what, label in (("floor", "encoder forward (preprocessed tensor)"), ("greedy", "warm greedy caption"),
                            ("beam3", "warm beam-3 caption"), ("batch8", "`caption([8 images])`, per image")):
            ms = {name: times[name, what] for name in PRECISION_ROWS}
            table.rows.append([label, *(_ms(ms[name]) for name in PRECISION_ROWS),
                               round(ms["onnx int8"] / ms["onnx fp32"], 2), round(ms["onnx int8"] / ms["torch"], 2),
                               round(ms["onnx fp32"] / ms["torch"], 2)])
        tables.append(table)
        if threads == (args.threads or torch.get_num_threads()):
            ratio = times[auto, "greedy"] / times["torch", "greedy"]
            targets.append([f"warm greedy caption with `--precision auto` ({auto}, the check {agreement.verdict}) "
                            "<= 0.35x the torch backend's, >= 98% identical captions on held-out photos",
                            f"{ratio:.2f}x; int8 {times['onnx int8', 'greedy'] / times['torch', 'greedy']:.2f}x "
                            f"with {agreement.rate(agreement.greedy):.1%} identical",
                            ratio <= 0.35 and agreement.passed])
    tables.append(dataset_speed(model, images, env, 8 if args.quick else 48))
    commands = {f"`python -m captioner caption IMG --precision {precision}` (int8 exported)":
                [sys.executable, "-m", "captioner", "caption", str(images[0]), "--model", str(model), "--precision",
                 precision] for precision in ("fp32", "int8")}
    cold, _ = cold_start(commands, 1 if args.quick else 3, env, {
        "first run, fp32 (exports the fp32 encoder into the cache)": next(iter(commands.values()))})
    tables.append(cold)
    return tables, targets


def dataset_speed(model: Path, images: list[Path], env: dict[str, str], count: int) -> Table:
    """Images/s of `caption-dataset` with one worker on ``count`` images, fp32 and int8, from the
    workers' start to the last row (Ray's own start left out)."""
    table = Table(f"`caption-dataset` on one worker ({count} images, batch 8, beam 3)",
                  ["precision", "images/s", "s (without Ray's start)"])
    if importlib.util.find_spec("ray") is None:
        table.notes.append("Ray is not installed: not measured")
        return table
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for index in range(count):
            shutil.copy(images[index % len(images)], folder / f"{index:04d}{images[index % len(images)].suffix}")
        for precision in ("fp32", "int8"):
            code = ("import json, sys; from captioner.serving.ray_data import caption_dataset; "
                    "run = caption_dataset(sys.argv[1], sys.argv[2], workers=1, model=sys.argv[3], backend='onnx', "
                    "precision=sys.argv[4]); print(json.dumps([run.captioned, run.seconds - run.startup_seconds]))")
            done = subprocess.run([sys.executable, "-c", code, str(folder), str(Path(tmp) / f"out-{precision}"),
                                   str(model), precision], cwd=ROOT, env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
                                  capture_output=True, text=True, check=True)
            captioned, seconds = json.loads(done.stdout.strip().splitlines()[-1])
            table.rows.append([precision, round(captioned / seconds, 1), round(seconds, 1)])
    return table


# ---------------------------------------------------------------- report


def machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.system()}")


def load_note(start: tuple[float, ...], end: tuple[float, ...]) -> str:
    cores = os.cpu_count() or 1
    busy = max(start[0], end[0]) > 0.5 * cores
    return (f"load average {start[0]:.1f} at start, {end[0]:.1f} at end on {cores} cores"
            + (": the machine was busy with other work, absolute times are inflated; compare ratios" if busy else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and sizes (about a minute)")
    parser.add_argument("--model", help="model directory or owner/name (default: models/default, else a stand-in)")
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-152 and tutorial comparisons")
    parser.add_argument("--json", metavar="PATH", help="also write the tables as JSON")
    parser.add_argument("--int8", choices=("also", "only", "no"), default="also",
                        help="the fp32 against int8 encoder tables: with the rest (default), alone, or not")
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="photos for the int8 export (default: the real-photo set, built from installed packages)")
    add_clock_options(parser, "in-process timings: wall time, or process CPU time (steadier with --threads 1 "
                              "on a busy machine)",
                      "torch threads here and OMP_NUM_THREADS for the processes started (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = chosen_clock(args)
    quick = args.quick
    load_start = os.getloadavg()
    started = time.perf_counter()
    images = photos()
    tables: list[Table] = []

    def report(table: Table) -> None:
        tables.append(table)
        print(table.markdown() + "\n", flush=True)

    print(f"## Benchmarks\n\nMachine: {machine()}. {'Quick run' if quick else 'Full run'}; in-process times are "
          f"{'process CPU time' if args.clock == 'cpu' else 'wall time'}.\n", flush=True)
    targets = Table("Targets (ratios from this run)", ["target", "measured", "met"])
    env = {**os.environ, "MPLBACKEND": "Agg", **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}

    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["CAPTIONER_CACHE"] = str(tmp / "cache-in-process")  # ONNX exports: fresh, and not the user's
        env["CAPTIONER_CACHE"] = str(tmp / "cache-cli")
        source, description = bundled_or_stand_in(args.model, tmp)
        if args.int8 != "no" and onnxruntime_available():
            int8_results, int8_targets = int8_tables(source, images, args, tmp, env)
            for table in int8_results:
                report(table)
            targets.rows += int8_targets
        if args.int8 == "only":
            report(targets)
            print(f"{load_note(load_start, os.getloadavg())}; {time.perf_counter() - started:.0f} s in all.")
            return 0
        loads = Table("Loading a model in-process, as `load_captioner(dir, 'cpu', backend)` does (in-process clock)",
                      ["model", "backend", "first load s (ONNX: exports)", "next load s (ONNX: cached export)"])
        preprocess = time_loads(source, loads, "efficientnet-lite0")
        lite_workers = start_workers(source, images, args)
        backbone = lite_workers["torch"].backbone
        latency = warm_latency(f"{backbone}, {description}", lite_workers, preprocess, images, 7 if quick else 15)
        report(latency)
        times = latency.times
        for backend in ("torch",):  # the library's own targets, set before the ONNX backend existed
            floor = times[backend, "floor"]
            greedy_ratio, beam_ratio = times[backend, "greedy"] / floor, times[backend, "beam3"] / floor
            greedy12, beam12 = times[backend, "greedy12"] / floor, times[backend, "beam3_12"] / floor
            targets.rows += [[f"{backbone}, {backend}: warm greedy caption <= 1.3x encoder forward",
                              f"{greedy_ratio:.2f}x ({greedy12:.2f}x at {TYPICAL_LENGTH} tokens)", greedy_ratio <= 1.3],
                             [f"{backbone}, {backend}: warm beam-3 caption <= 1.6x encoder forward",
                              f"{beam_ratio:.2f}x ({beam12:.2f}x at {TYPICAL_LENGTH} tokens)", beam_ratio <= 1.6]]
        if "onnx" in lite_workers:
            for what, label, limit in (("greedy", "greedy", 0.5), ("beam3", "beam-3", 0.55)):
                ratio = times["onnx", what] / times["torch", what]
                targets.rows.append([f"{backbone}: warm {label} caption with `auto` (ONNX Runtime on CPU) <= "
                                     f"{limit}x the torch backend's", f"{ratio:.2f}x", ratio <= limit])
        report(throughput(backbone, lite_workers, [1, 8, 32], 2.0 if quick else 6.0))
        for worker in lite_workers.values():
            worker.close()

        model_args = ["--model", source] if source else []
        image = str(EXAMPLES / "coffee.jpg")
        caption = [sys.executable, "-m", "captioner", "caption", image]
        commands = {
            "`python -c 'import torch'`": [sys.executable, "-c", "import torch"],
            "`python -c 'import torch, torchvision'`": [sys.executable, "-c", "import torch, torchvision"],
            f"`python -m captioner caption IMG --backend torch` ({description.split(':')[0]})":
                [*caption, *model_args, "--backend", "torch"],
        }
        lite_label = list(commands)[-1]
        onnx_label = lite_label.replace("--backend torch", "--backend onnx") + ", export cached"
        if onnxruntime_available():
            commands[onnx_label] = [*caption, *model_args, "--backend", "onnx"]
        if not args.no_resnet:
            files = tutorial_stand_in(tmp)
            preprocess = time_loads(str(files["model"]), loads, "resnet152")
            resnet_workers = start_workers(str(files["model"]), images, args)
            from tutorial_reference import build_transform, load_models

            tutorial = (*load_models(files["encoder"], files["decoder"], files["vocab"]), build_transform())
            warm_resnet = warm_latency("resnet152 (legacy-imported stand-in, random weights)", resnet_workers,
                                       preprocess, images, 3 if quick else 7, tutorial=tutorial)
            report(warm_resnet)
            rt = warm_resnet.times
            for backend in resnet_workers:
                targets.rows.append([f"resnet152, {backend}: warm greedy caption no slower than the tutorial's code",
                                     f"{rt[backend, 'greedy'] / rt['', 'tutorial']:.2f}x the tutorial's time",
                                     rt[backend, "greedy"] <= rt["", "tutorial"]])
            if "onnx" in resnet_workers:
                for what in ("floor", "greedy", "beam3"):
                    speedup = rt["torch", what] / rt["onnx", what]
                    label = {"floor": "encoder forward", "greedy": "warm greedy caption",
                             "beam3": "warm beam-3 caption"}[what]
                    targets.rows.append([f"resnet152: {label} with ONNX Runtime >= 1.5x faster than torch",
                                         f"{speedup:.2f}x", speedup >= 1.5])
            del tutorial
            report(throughput("resnet152", resnet_workers, [1, 8] if quick else [1, 8, 32], 1.0 if quick else 4.0))
            for worker in resnet_workers.values():
                worker.close()
            count = 3 if quick else 10
            reload_table, speedup, warm_speedup = reload_per_call(files, images, count)
            report(reload_table)
            targets.rows += [[f"resnet152: >= 8x faster than reload-per-call over {count} captions, counting our load",
                              f"{speedup:.1f}x", speedup >= 8],
                             ["same, already loaded", f"{warm_speedup:.1f}x", warm_speedup >= 8]]
            resnet_label = "`python -m captioner caption IMG --model DIR --backend torch` (resnet152, imported)"
            commands[resnet_label] = [*caption, "--model", str(files["model"]), "--backend", "torch"]
            if onnxruntime_available():
                commands[resnet_label.replace("torch`", "onnx`") + ", export cached"] = [
                    *caption, "--model", str(files["model"]), "--backend", "onnx"]
            commands["tutorial `python sample.py --image IMG` (resnet152, same weights)"] = [
                sys.executable, str(BENCH / "sample.py"), "--image", image, "--encoder_path", str(files["encoder"]),
                "--decoder_path", str(files["decoder"]), "--vocab_path", str(files["vocab"])]
        if not quick:
            batch = [str(p) for p in (images * 7)[:32]]
            for backend in ("torch", "onnx") if onnxruntime_available() else ("torch",):
                commands[f"`python -m captioner caption` with 32 images, `--batch-size 32 --backend {backend}` "
                         "(bundled model)"] = [sys.executable, "-m", "captioner", "caption", *batch, "--batch-size",
                                               "32", *model_args, "--backend", backend]
        first_runs = {label.replace(", export cached", ", first run: exports"): command
                      for label, command in commands.items() if label.endswith("export cached")}
        cold, medians = cold_start(commands, 1 if quick else 3, env, first_runs)
        report(cold)
        bare = medians["`python -c 'import torch, torchvision'`"]
        ours = medians[lite_label]
        targets.rows.append(["CLI cold start (torch backend) within 1.5 s of bare `import torch, torchvision`",
                             f"wall {ours[0] - bare[0]:+.2f} s, CPU {ours[1] - bare[1]:+.2f} s",
                             ours[0] - bare[0] <= 1.5 and ours[1] - bare[1] <= 1.5])
        if onnx_label in medians:
            mine = medians[onnx_label]
            targets.rows.append(["CLI cold start with a cached ONNX export no slower than with torch",
                                 f"wall {mine[0] - ours[0]:+.2f} s, CPU {mine[1] - ours[1]:+.2f} s",
                                 mine[0] <= ours[0] and mine[1] <= ours[1]])
        if not args.no_resnet:
            sample = medians["tutorial `python sample.py --image IMG` (resnet152, same weights)"]
            ours_resnet = medians[resnet_label]
            for label, mine in (("CLI cold start <= half of the tutorial's sample.py", ours),
                                ("same, both on the ResNet-152 weights", ours_resnet)):
                wall, cpu = mine[0] / sample[0], mine[1] / sample[1]
                targets.rows.append([label, f"wall {wall:.2f}x, CPU {cpu:.2f}x", wall <= 0.5 and cpu <= 0.5])
        report(loads)

    load_end = os.getloadavg()
    report(targets)
    print(f"{load_note(load_start, load_end)}; {time.perf_counter() - started:.0f} s in all.")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "load_average": [load_start, load_end], "quick": quick,
            "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows, "notes": t.notes} for t in tables],
        }, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
