"""Load and soak test of the web app: concurrent gradio_client users against the real app on 127.0.0.1.

    python benchmarks/load.py                  # 32 users x 4 requests x 2 rounds at max batch 1, 4, 8;
                                               # 1-user baseline; 1000-request soak (about 5 minutes)
    python benchmarks/load.py --quick          # small numbers, for smoke runs (a minute or two)
    python benchmarks/load.py --model DIR --json load.json --max-seconds 900

For each maximum batch size, ``python app.py --model SRC --max-batch-size B`` is started on a free
loopback port (the servers run side by side, and the rounds of load alternate between them, so
that a change in the machine's load affects every size alike). One thread per user, each with its
own ``gradio_client.Client`` and client address (``new_client``), calls ``/caption`` (beam 3, the
API default). The default batch
size's server (the last size given) also serves a one-user baseline and then the soak, during
which the server process's memory (RSS) is read every 250 requests (a quarter of a shorter soak).

Every request sends a different image: an example photo with a request number stamped into it as a
black-and-white code. The app answers a repeated image from memory, so sending the photos as they
are would measure Gradio alone; one baseline row does exactly that, as the floor of the HTTP path.

Bounded: loopback only, a fixed number of requests, and a hard wall-clock cap (``--max-seconds``);
phases that do not fit are skipped and say so. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio_client is imported: no calls home
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

import psutil  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import Table, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
HOST = "127.0.0.1"
DEFAULT_BATCH = 8  # app.MAX_BATCH_SIZE (not imported: that would load Gradio and torch here)
RSS_EVERY = 250


# ---------------------------------------------------------------- tables


# ---------------------------------------------------------------- images


def stamped_photos(count: int, folder: Path) -> list[Path]:
    """``count`` distinct JPEGs: the example photos in turn, each with its index stamped near the
    centre as 16 black or white squares (large enough to survive resizing, cropping and JPEG)."""
    bases = [Image.open(path) for path in sorted(EXAMPLES.glob("*.jpg"))]
    for base in bases:
        base.load()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = bases[index % len(bases)].copy()
        square = max(6, min(image.size) // 40)
        left, top = image.width // 2 - 8 * square, image.height // 2
        black, white = (0, 255) if image.mode == "L" else ((0, 0, 0), (255, 255, 255))
        for bit in range(16):
            box = (left + bit * square, top, left + (bit + 1) * square, top + square)
            image.paste(white if index >> bit & 1 else black, box)
        path = folder / f"{index:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class AppServer:
    """``python app.py`` in a child process on a free loopback port."""

    def __init__(self, model: str, batch_size: int, log: Path):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.log_path = log
        env = {**os.environ, "GRADIO_SERVER_NAME": HOST, "GRADIO_SERVER_PORT": str(self.port),
               "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        env.pop("CAPTIONER_MAX_BATCH", None)
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--model", model, "--max-batch-size", str(batch_size)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)

    def wait_ready(self, deadline: float) -> float:
        """Seconds from start until the app answers HTTP; raises when it exits or time runs out."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                with opener.open(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"app.py did not answer within the time limit:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """Resident memory of the server process and any children, MiB."""
        processes = [self.ps, *self.ps.children(recursive=True)]
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# ---------------------------------------------------------------- load


@dataclass
class Phase:
    """One measured burst of requests."""

    name: str
    users: int
    batch_size: int
    requested: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: int = 0  # not sent: the time limit came first
    wall_s: float = float("nan")
    latencies_s: list[float] = field(default_factory=list)
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")
    rss_mib: list[tuple[int, float]] = field(default_factory=list)  # (requests done, RSS) samples
    rounds_rps: list[float] = field(default_factory=list)  # requests/s of each round merged in

    def add(self, other: Phase) -> None:
        """Merge another round of the same load into this one."""
        self.ok, self.skipped = self.ok + other.ok, self.skipped + other.skipped
        self.errors += other.errors
        self.latencies_s += other.latencies_s
        for name in ("wall_s", "server_cpu_s", "client_cpu_s"):
            mine = getattr(self, name)
            setattr(self, name, getattr(other, name) + (0.0 if math.isnan(mine) else mine))
        self.rounds_rps.append(other.throughput)

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]  # nearest rank

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.ok else float("nan")

    @property
    def ms_per_request(self) -> float:
        """Wall time per answered request: 1 / throughput."""
        return 1000 * self.wall_s / self.ok if self.ok else float("nan")

    def summary(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "latencies_s"},
                "throughput_rps": self.throughput, "ms_per_request": self.ms_per_request,
                **{f"p{q}_ms": 1000 * self.percentile(q) for q in (50, 95, 99)},
                "max_ms": 1000 * max(self.latencies_s, default=float("nan"))}


def new_client(url: str, user: int) -> Client:
    """A user's client. Each user has an address of its own (``X-Forwarded-For``, which the app
    trusts from 127.0.0.1 as it would from a proxy in front of it), as users on the internet do:
    the app caps the requests each address may have waiting or running."""
    return Client(url, verbose=False, download_files=False, analytics_enabled=False,
                  headers={"X-Forwarded-For": f"10.0.{user // 256}.{user % 256}"})


def run_phase(server: AppServer, phase: Phase, images: Callable[[int], Path], deadline: float,
              rss_every: int = 0) -> Phase:
    """``phase.users`` threads, each with its own Client, share out ``phase.requested`` requests
    (``images(i)`` is the i-th request's file); timing starts once every client is connected."""
    quotas = [phase.requested // phase.users + (u < phase.requested % phase.users) for u in range(phase.users)]
    lock = threading.Lock()
    counter = iter(range(phase.requested))
    done = [0]
    finished = [0.0]  # perf_counter of the last answer (closing the clients is not timed)
    barrier = threading.Barrier(phase.users + 1)

    def fail(message: str) -> None:
        with lock:
            phase.errors.append(message[:400])

    def user(number: int) -> None:
        client = None
        try:
            client = new_client(server.url, number)
        except Exception as error:  # noqa: BLE001 - reported as an error of the run
            fail(f"user {number}: could not connect: {type(error).__name__}: {error}")
        try:
            barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
        except threading.BrokenBarrierError:
            pass
        if client is None:
            with lock:
                phase.skipped += quotas[number]
            return
        for sent in range(quotas[number]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with lock:
                    phase.skipped += quotas[number] - sent
                break
            with lock:
                index = next(counter)
            start = time.perf_counter()
            try:
                job = client.submit(handle_file(str(images(index))), api_name="/caption")
                result = job.result(timeout=remaining)
                if not isinstance(result, dict) or not isinstance(result.get("caption"), str):
                    raise ValueError(f"unexpected answer {str(result)[:200]!r}")
            except TimeoutError:
                if time.monotonic() < deadline:  # (gradio_client's own time limit)
                    fail(f"user {number}, request {index}: no answer")
                else:  # cut off by the time limit: not sent to completion, not a server error
                    with lock:
                        phase.skipped += quotas[number] - sent
                    break
                continue
            except Exception as error:  # noqa: BLE001 - every failure is counted and printed
                fail(f"user {number}, request {index}: {type(error).__name__}: {error}")
                continue
            end = time.perf_counter()
            with lock:
                finished[0] = max(finished[0], end)
                phase.ok += 1
                phase.latencies_s.append(end - start)
                done[0] += 1
                sample = rss_every and done[0] % rss_every == 0
                count = done[0]
            if sample:
                phase.rss_mib.append((count, server.rss_mib()))
        client.close()

    threads = [threading.Thread(target=user, args=(u,), daemon=True, name=f"user-{u}") for u in range(phase.users)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
    except threading.BrokenBarrierError:
        fail("not every user connected before the time limit")
    if rss_every:
        phase.rss_mib.append((0, server.rss_mib()))
    server_cpu, client_cpu = server.cpu_seconds(), _own_cpu()
    started = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, deadline + 5 - time.monotonic()))
    phase.wall_s = (finished[0] or time.perf_counter()) - started
    phase.server_cpu_s, phase.client_cpu_s = server.cpu_seconds() - server_cpu, _own_cpu() - client_cpu
    if any(thread.is_alive() for thread in threads):
        fail("some users were still waiting for answers at the time limit")
    if rss_every and (not phase.rss_mib or phase.rss_mib[-1][0] != done[0]):
        phase.rss_mib.append((done[0], server.rss_mib()))
    return phase


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- models and machine


def choose_model(model: str | None, tmp: Path) -> tuple[str, str]:
    """(what to pass as --model, how to describe it): ``model``, the bundled model, or a stand-in."""
    if model:
        return model, f"model {model}"
    if (ROOT / "models" / "default" / "config.json").is_file():
        return str(ROOT / "models" / "default"), "bundled model (models/default)"
    sys.path[:0] = [str(ROOT), str(BENCH)]
    from bench import bundled_or_stand_in  # builds with torch: only imported when needed

    return bundled_or_stand_in(None, tmp)


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python " \
           f"{platform.python_version()}, {platform.system()}"


# ---------------------------------------------------------------- report


def load_table(phases: list[Phase], title: str) -> Table:
    table = Table(title, ["run", "max batch", "users", "answered", "errors", "wall s", "requests/s",
                          "ms per request (1/throughput)", "p50 ms", "p95 ms", "p99 ms", "max ms",
                          "server CPU ms/request", "client CPU ms/request"])
    for p in phases:
        per = (lambda seconds: 1000 * seconds / p.ok) if p.ok else (lambda seconds: float("nan"))
        table.rows.append([p.name, p.batch_size, p.users, f"{p.ok}/{p.requested}", len(p.errors),
                           round(p.wall_s, 1), round(p.throughput, 2), round(p.ms_per_request, 1),
                           round(1000 * p.percentile(50)), round(1000 * p.percentile(95)),
                           round(1000 * p.percentile(99)),
                           round(1000 * max(p.latencies_s, default=float("nan"))),
                           round(per(p.server_cpu_s), 1), round(per(p.client_cpu_s), 1)])
    return table


def recommend(loads: dict[int, Phase], default: int) -> tuple[int | None, str]:
    """The batch size with the highest throughput, unless ``default`` is within 5% of it: a
    difference that small is within run-to-run noise here and no reason to change the setting."""
    measured = {size: p for size, p in loads.items() if p.ok and not p.errors and not p.skipped}
    if not measured:
        return None, "no batch size was measured completely"
    best = max(measured, key=lambda size: measured[size].throughput)
    tied = sorted(size for size, p in measured.items() if p.throughput >= 0.95 * measured[best].throughput)
    choice = default if default in tied else best
    rates = ", ".join(f"{size}: {p.throughput:.2f}/s" for size, p in sorted(measured.items()))
    why = f"requests/s by max batch size: {rates}"
    if len(tied) > 1:
        why += (f"; {', '.join(map(str, tied))} are within 5% of each other (run-to-run noise)"
                + (f", so the default {default} stays" if choice == default else ""))
    return choice, why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: models/default, else a stand-in is built)")
    parser.add_argument("--quick", action="store_true",
                        help="small numbers for smoke runs: 4 users x 2 requests, batch sizes 1 and 8, soak 100")
    parser.add_argument("--users", type=int, help="concurrent users (default 32; quick 4)")
    parser.add_argument("--requests", type=int, help="requests per user (default 4; quick 2)")
    parser.add_argument("--rounds", type=int, help="rounds of the users x requests load per batch size, "
                                                   "interleaved across the servers (default 2; quick 1)")
    parser.add_argument("--baseline", type=int, help="requests of the one-user baseline (default 16; quick 4)")
    parser.add_argument("--batch-sizes", help="max batch sizes to compare, comma-separated "
                                              f"(default 1,4,{DEFAULT_BATCH}; quick 1,{DEFAULT_BATCH}); the soak "
                                              "and baseline use the last")
    parser.add_argument("--soak", type=int, help="requests in the soak (default 1000; quick 100; 0 skips it)")
    parser.add_argument("--soak-users", type=int, help="concurrent users in the soak (default: --users)")
    parser.add_argument("--max-seconds", type=float, help="hard wall-clock cap (default 1200; quick 300)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    users = args.users or (4 if quick else 32)
    per_user = args.requests or (2 if quick else 4)
    baseline = args.baseline or (4 if quick else 16)
    rounds = args.rounds or (1 if quick else 2)
    soak = args.soak if args.soak is not None else (100 if quick else 1000)
    soak_users = args.soak_users or users
    sizes = [int(s) for s in (args.batch_sizes or (f"1,{DEFAULT_BATCH}" if quick else f"1,4,{DEFAULT_BATCH}")).split(",")]
    if min(users, per_user, rounds, baseline, soak_users, *sizes) < 1 or soak < 0:
        parser.error("counts and batch sizes must be at least 1 (--soak 0 skips the soak)")
    cap = args.max_seconds or (300.0 if quick else 1200.0)
    began = time.monotonic()
    deadline = began + cap
    load_start = os.getloadavg()
    skipped_phases: list[str] = []
    all_phases: list[Phase] = []
    warm_ups: list[Phase] = []  # not in the tables, but their errors count
    loads: dict[int, Phase] = {}
    singles: list[Phase] = []
    soak_phase: Phase | None = None
    rss_ready: float | None = None
    startups: dict[int, float] = {}
    servers: dict[int, AppServer] = {}

    def watchdog() -> None:  # the last resort behind the per-request time limits
        print(f"load.py: still running {cap + 60:.0f} s after start; stopping.", file=sys.stderr)
        for server in servers.values():
            server.process.kill()
        os._exit(3)

    timer = threading.Timer(cap + 60, watchdog)
    timer.daemon = True
    timer.start()
    print(f"Machine: {machine()}; load average {load_start[0]:.1f}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="captioner-load-") as tmp_name:
        tmp = Path(tmp_name)
        source, description = choose_model(args.model, tmp)
        default = sizes[-1]
        needed = 1 + baseline + rounds * users * per_user + 1 + soak
        print(f"Making {needed} distinct request images...", file=sys.stderr)
        photos = stamped_photos(needed, tmp / "requests")
        originals = sorted(EXAMPLES.glob("*.jpg"))
        cursors = dict.fromkeys(sizes, 0)  # each server has its own memory of images: a new photo per request

        def take(size: int, count: int) -> Callable[[int], Path]:
            offset = cursors[size]
            cursors[size] += count
            return lambda i: photos[offset + i]

        try:
            for size in sizes:  # one server per batch size, side by side, so the rounds can alternate
                if time.monotonic() >= deadline:
                    skipped_phases.append(f"max batch {size}: the time limit came first")
                    continue
                print(f"Starting app.py --max-batch-size {size}...", file=sys.stderr)
                server = servers[size] = AppServer(source, size, tmp / f"app-{size}.log")
                try:
                    startups[size] = server.wait_ready(deadline)
                except (RuntimeError, TimeoutError) as error:
                    skipped_phases.append(f"max batch {size}: {error}")
                    servers.pop(size).stop()
                    continue
                if size == default:
                    rss_ready = server.rss_mib()
                warm_ups.append(run_phase(server, Phase("warm-up", 1, size, 1), take(size, 1), deadline))
            if default in servers:
                print(f"  1-user baseline, {baseline} requests...", file=sys.stderr)
                single = run_phase(servers[default], Phase("1 user, a new photo each request", 1, default,
                                                           baseline), take(default, baseline), deadline)
                memo = run_phase(servers[default], Phase("1 user, the example photos as they are (answered from "
                                                         "the app's memory: the HTTP path alone)", 1, default,
                                                         baseline), lambda i: originals[i % len(originals)], deadline)
                singles += [single, memo]
            running = [size for size in sizes if size in servers]
            loads.update({size: Phase(f"{users} users x {per_user}, {rounds} round{'s' * (rounds > 1)}", users,
                                      size, 0) for size in running})
            for round_ in range(rounds):
                for size in running[round_ % len(running):] + running[:round_ % len(running)]:
                    print(f"  round {round_ + 1}: {users} users x {per_user} requests, max batch {size}...",
                          file=sys.stderr)
                    loads[size].requested += users * per_user
                    loads[size].add(run_phase(servers[size], Phase("", users, size, users * per_user),
                                              take(size, users * per_user), deadline))
            for size in running:
                if size != default:
                    servers.pop(size).stop()
            if default in servers and soak:
                print(f"  soak: {soak} requests from {soak_users} users...", file=sys.stderr)
                warm_ups.append(run_phase(servers[default], Phase("warm-up", 1, default, 1), take(default, 1),
                                          deadline))
                soak_phase = run_phase(servers[default], Phase(f"soak, {soak_users} users", soak_users, default,
                                                               soak), take(default, soak), deadline,
                                       rss_every=min(RSS_EVERY, max(1, soak // 4)))
        finally:
            for server in servers.values():
                server.stop()
        all_phases += [*singles, *(loads[size] for size in sizes if size in loads),
                       *([soak_phase] if soak_phase else [])]

    timer.cancel()
    load_end = os.getloadavg()
    elapsed = time.monotonic() - began
    tables: list[Table] = []
    cores = os.cpu_count() or 1
    busy = load_start[0] > 0.5 * cores  # (at the end, the load average includes this run's own work)
    header = (f"## Load and soak test of the web app\n\n"
              f"Machine: {machine()}. The server (`python app.py`) and all client threads (gradio_client) share "
              f"these {cores} cores, so the clients' own work (upload, JSON, SSE) takes CPU from the server: "
              f"absolute throughput understates the server alone. Load average {load_start[0]:.1f} before the run"
              + (" (the machine was busy with other work, so absolute times are inflated; compare rows)"
                 if busy else " (quiet)") + f", {load_end[0]:.1f} at its end (its own load included)"
              + f". Model: {description}. Every request: `/caption`, beam 3 (the API default), a distinct photo. "
              f"{'Quick run' if quick else 'Run'}: {users} users x {per_user} requests x {rounds} round(s) at max batch "
              f"{', '.join(map(str, sizes))}; 1-user baseline of {baseline}; "
              + (f"soak of {soak} from {soak_users} users; " if soak else "no soak; ")
              + f"{elapsed:.0f} s of a {cap:.0f} s cap.\n")

    if all_phases:
        tables.append(load_table([*singles, *(loads[s] for s in sizes if s in loads)],
                                 f"Throughput and latency: {users} concurrent users x {per_user} requests, "
                                 "by maximum batch size"))
        tables[-1].notes += [
            f"one app server per batch size, running side by side; the {rounds} round(s) of load alternate "
            "between them so that a change in the machine's load affects every size alike. requests/s per "
            "round: " + "; ".join(f"max batch {size}: " + ", ".join(f"{r:.2f}" for r in loads[size].rounds_rps)
                                  for size in sizes if size in loads) + ".",
            "max batch 1 turns request batching off: every request gets its own forward pass.",
            "app.py lets 8 `/caption` calls run at once (CAPTION_CONCURRENCY), so a batch never exceeds 8.",
            "ms per request (1/throughput) is the per-image cost at this load; latency is each request's own "
            "time from upload to answer.",
            "server start to first answer over HTTP (s): "
            + ", ".join(f"max batch {s}: {t:.1f}" for s, t in startups.items())]
    single = singles[0] if singles else None
    batched, unbatched = loads.get(default), loads.get(1) if default != 1 else None
    if single and single.ok and batched and batched.ok:
        cost = Table("Does batching slow the server down? Per-image cost (wall time per answered request)",
                     ["comparison", "ms per image", "vs 1 user alone", "target met (<= 1.0)"])
        cost.rows.append(["1 user alone (requests one after another)", round(single.ms_per_request, 1), 1.0, ""])
        ratio = batched.ms_per_request / single.ms_per_request
        cost.rows.append([f"{users} users, max batch {default} (batching on)", round(batched.ms_per_request, 1),
                          round(ratio, 2), ratio <= 1.0])
        if unbatched and unbatched.ok:
            cost.rows.append([f"{users} users, max batch 1 (batching off)", round(unbatched.ms_per_request, 1),
                              round(unbatched.ms_per_request / single.ms_per_request, 2), ""])
            cost.notes.append(f"batching on / off at {users} users: "
                              f"{batched.ms_per_request / unbatched.ms_per_request:.2f}x the time per image")
        tables.append(cost)
    if soak_phase is not None:
        samples = soak_phase.rss_mib
        memory = Table(f"Soak: {soak_phase.ok} of {soak_phase.requested} requests from {soak_phase.users} users "
                       f"(max batch {default}), server memory (RSS of the app process)",
                       ["point", "requests done", "RSS MiB"])
        if rss_ready is not None:
            memory.rows.append(["server ready, before any request", "-", round(rss_ready)])
        for index, (count, rss) in enumerate(samples):
            point = "soak start (after the load runs)" if index == 0 else \
                "soak end" if index == len(samples) - 1 else f"after {count}"
            memory.rows.append([point, count, round(rss)])
        if len(samples) >= 2:
            growth = samples[-1][1] - samples[0][1]
            memory.notes.append(f"growth over the soak: {growth:+.0f} MiB ({growth / samples[0][1]:+.1%}); "
                                f"since the server was ready: {samples[-1][1] - (rss_ready or samples[0][1]):+.0f} MiB")
            half = next((rss for count, rss in samples[1:-1] if count >= samples[-1][0] / 2), None)
            if half is not None:
                memory.notes.append(f"growth over the second half: {samples[-1][1] - half:+.0f} MiB "
                                    "(the app remembers up to 256 recent results; uploads go to disk)")
        memory.notes.append(f"throughput {soak_phase.throughput:.2f} requests/s, p50 "
                            f"{1000 * soak_phase.percentile(50):.0f} ms, p99 {1000 * soak_phase.percentile(99):.0f} "
                            f"ms, errors {len(soak_phase.errors)}")
        tables.append(memory)
    choice, why = recommend(loads, sizes[-1])
    errors = [e for p in [*warm_ups, *all_phases] for e in p.errors]
    skipped = sum(p.skipped for p in [*warm_ups, *all_phases])

    print(header)
    for table in tables:
        print(table.markdown() + "\n")
    print(f"**Recommended max batch size:** {choice if choice is not None else 'none'} ({why}).\n")
    print(f"**Errors: {len(errors)}**" + (":" if errors else " (every request answered)."))
    for error in errors[:50]:
        print(f"- {error}")
    if len(errors) > 50:
        print(f"- ... and {len(errors) - 50} more")
    if skipped or skipped_phases:
        print(f"\n**Not run** (time limit or start failure): {skipped} requests not sent or cut off"
              + "".join(f"\n- {reason}" for reason in skipped_phases))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "cores": cores, "load_average": [load_start, load_end], "quick": quick,
            "model": description, "seconds": elapsed, "max_seconds": cap, "startup_s": startups,
            "rss_ready_mib": rss_ready, "phases": [p.summary() for p in all_phases],
            "recommended_batch_size": choice, "recommendation": why, "errors": errors,
            "skipped_requests": skipped, "skipped_phases": skipped_phases,
            "tables": [asdict(t) for t in tables],
        }, indent=2, default=str) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
