"""Ray front ends against the single-process ones, as Markdown tables of one run's measurements.

    python benchmarks/ray_bench.py               # about 5-8 minutes on 2 CPU cores
    python benchmarks/ray_bench.py --images 96 --requests 96   # a quicker look

1. Batch captioning: the same N photos (the examples and scikit-image photos with generated
   variations, written to a temporary folder) through ``python -m captioner caption`` (one process)
   and through ``caption-dataset`` on a local Ray cluster with 1 and 2 workers. Ray's start-up
   (``ray.init``) is timed on its own; each Ray row includes its workers' model loads.
2. Serving: requests/s and latency (p50, p95) with 32 concurrent clients, each sending one photo,
   against the Ray Serve endpoint (``POST /v1/caption``, one replica) and the Gradio app's
   ``/caption`` API (``gradio_client``), both on this machine.
3. What a 10-million-image job needs on CPU nodes, from the measured per-image cost of a worker.

Absolute numbers depend on the machine and its load; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from tables import Table, cpu_name  # noqa: E402

TARGET_IMAGES = 10_000_000
NODE_CPUS = 32  # a common CPU node size for the estimate


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` real photos: the examples, then scikit-image photos in generated variations."""
    import numpy as np
    import skimage.data
    from PIL import Image, ImageEnhance, ImageOps

    paths = []
    for path in sorted((ROOT / "examples").glob("*.jpg")):
        paths.append(folder / path.name)
        paths[-1].write_bytes(path.read_bytes())
    bases = [Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB") for name in
             ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field")]
    step = 0
    while len(paths) < count:
        image = bases[step % len(bases)]
        width, height = image.size
        variant = step // len(bases)
        box = (variant % 7 * width // 40, variant % 5 * height // 40, width - variant % 3 * width // 40, height)
        image = image.crop(box).rotate(variant % 4 * 90, expand=True)
        image = ImageEnhance.Brightness(ImageOps.mirror(image) if variant % 2 else image).enhance(0.7 + variant % 6 / 10)
        paths.append(folder / f"photo-{step:04d}.jpg")
        image.save(paths[-1], quality=90)
        step += 1
    return paths[:count]


def time_cli(paths: list[Path]) -> tuple[float, float]:
    """(seconds for one image, seconds for all) with ``python -m captioner caption``."""
    def run(args: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captioner", "caption", *args], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    return run([str(paths[0])]), run([str(path) for path in paths])


def batch_table(paths: list[Path], work: Path) -> tuple[Table, float]:
    import ray

    from captioner.serving.ray_data import caption_dataset

    one, everything = time_cli(paths)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300_000_000)
    startup = time.perf_counter() - start
    rows, worker_cost = [], 0.0
    cli_rate = len(paths) / everything
    rows.append(["`caption` CLI, one process", f"{everything:.1f}", f"{cli_rate:.2f}", "1.00",
                 f"start-up (one image) {one:.1f} s"])
    try:
        for workers in (1, 2):
            run = caption_dataset(paths[0].parent, work / f"out-{workers}", workers=workers, batch_size=8)
            assert run.captioned == len(paths) and run.failed == 0, run
            rate = len(paths) / run.seconds
            rows.append([f"`caption-dataset`, {workers} worker(s)", f"{run.seconds:.1f}", f"{rate:.2f}",
                         f"{rate / cli_rate:.2f}", "model load per worker included"])
            if workers == 1:
                worker_cost = run.seconds / len(paths)
    finally:
        ray.shutdown()
    rows.append(["Ray start-up (`ray.init`, local 2-CPU cluster)", f"{startup:.1f}", "", "", "paid once per job"])
    table = Table(f"Batch captioning of {len(paths)} photos ({cpu_name()}, 2 cores)",
                  ["Run", "Seconds", "Images/s", "vs CLI", "Notes"], rows)
    return table, worker_cost


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(call, items: list, clients: int) -> tuple[float, list[float]]:
    """(requests/s, latencies) of ``call(item)`` for every item with ``clients`` at once."""
    def timed(item) -> float:
        start = time.perf_counter()
        call(item)
        return time.perf_counter() - start

    call(items[0])  # warm
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(timed, items))
    return len(items) / (time.perf_counter() - start), latencies


def serving_table(paths: list[Path], requests: int, clients: int) -> Table:
    import httpx
    import ray
    from gradio_client import Client, handle_file
    from ray import serve

    from captioner.web import app
    from captioner.serving.ray_serve import build_app, http_options

    items = [paths[i % len(paths)] for i in range(requests)]
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000)
    try:
        port = free_port()
        serve.start(http_options=http_options("127.0.0.1", port))
        # every simulated client comes from this one address: let all of them in
        serve.run(build_app(cpus_per_replica=2, max_batch_size=8, ui=False, requests_per_client=clients),
                  name="captioner", route_prefix="/")
        with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
            def ask(path: Path) -> None:
                answer = http.post(f"http://127.0.0.1:{port}/v1/caption", content=path.read_bytes())
                answer.raise_for_status()

            rate, latencies = load(ask, items, clients)
            health = http.get(f"http://127.0.0.1:{port}/healthz").json()
        mean_batch = health["requests"] / max(1, health["forward_passes"])
        rows.append(["Ray Serve `POST /v1/caption` (1 replica, 2 CPUs)", f"{rate:.2f}",
                     f"{percentile(latencies, 0.5):.2f}", f"{percentile(latencies, 0.95):.2f}",
                     f"{mean_batch:.1f} requests per forward pass"])
    finally:
        serve.shutdown()
        ray.shutdown()

    demo, state = app.build_app()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **app.launch_options())
    try:
        client = Client(url, verbose=False)
        rate, latencies = load(lambda path: client.predict(handle_file(str(path)), 3, 3, None, api_name="/caption"),
                               items, clients)
        shared = state.shared
        mean_batch = sum(shared.batch_sizes) / max(1, len(shared.batch_sizes))
        rows.append(["Gradio app `/caption` (gradio_client)", f"{rate:.2f}", f"{percentile(latencies, 0.5):.2f}",
                     f"{percentile(latencies, 0.95):.2f}", f"{mean_batch:.1f} images per forward pass"])
    finally:
        demo.close()
        state.close()
    serve_rate, gradio_rate = float(rows[0][1]), float(rows[1][1])
    return Table(f"Serving: {requests} requests, {clients} concurrent clients", ["Endpoint", "Requests/s",
                 "p50 s", "p95 s", "Batching"], rows,
                 [f"Ray Serve / Gradio requests/s: {serve_rate / gradio_rate:.2f}"])


def estimate_table(worker_cost: float) -> Table:
    rate = 1 / worker_cost  # one worker on one CPU
    rows = []
    for nodes in (1, 10, 50):
        workers = nodes * NODE_CPUS
        hours = TARGET_IMAGES / (rate * workers) / 3600
        rows.append([f"{nodes} x {NODE_CPUS}-vCPU node(s)", workers, f"{rate * workers:.0f}", f"{hours:.1f}"])
    return Table(f"10 million images on CPU nodes (estimate from {worker_cost * 1000:.0f} ms per image per worker)",
                 ["Cluster", "Workers (1 CPU each)", "Images/s", "Hours"], rows,
                 ["Assumes workers scale linearly across nodes (check the 1 vs 2 worker rows above) and that "
                  "storage keeps up; model loads and Ray start-up are minutes, not hours.",
                  "GPU figures are not measured here: a GPU worker's speed is an estimate until run on one."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        batch, worker_cost = batch_table(paths, Path(tmp))
        print(batch.markdown() + "\n", flush=True)
        print(estimate_table(worker_cost).markdown() + "\n", flush=True)
        print(serving_table(paths, args.requests, args.clients).markdown(), flush=True)


if __name__ == "__main__":
    main()
