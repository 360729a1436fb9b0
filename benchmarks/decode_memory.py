"""Memory of decoding worst-case images: 16 threads each load a 7000 x 7000 16-bit RGBA PNG
(a few hundred KB on disk), full size as before versus reduced under the byte semaphore, with
and without handing freed memory back (malloc_trim). Prints one table from one run.

    python benchmarks/decode_memory.py [--threads 16] [--side 7000]

Each configuration runs in its own process so that one cannot inherit another's heap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CASES = {  # name: (min_side, trim after large decodes)
    "full size, no trim (before)": (None, False),
    "full size, trim": (None, True),
    "reduced (min_side=512), no trim": (512, False),
    "reduced (min_side=512), trim (app default)": (512, True),
}


def measure(path: str, threads: int, min_side: int | None, trim: bool) -> dict:
    """Run in a child process: RSS before, peak during and after the concurrent decodes."""
    import psutil

    from captioner.core import images

    if not trim:
        images.TRIM_AFTER_BYTES = 1 << 62
    data = Path(path).read_bytes()
    process = psutil.Process()
    idle = process.memory_info().rss
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    workers = [threading.Thread(target=images.load_image, args=(data,), kwargs={"min_side": min_side})
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"idle": idle, "peak": peak, "after": process.memory_info().rss, "seconds": seconds,
            "semaphore_peak": images.DECODE_MEMORY.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, threads, min_side, trim = args.child
        print(json.dumps(measure(path, int(threads), None if min_side == "None" else int(min_side), trim == "1")))
        return
    from huge_png import write_rgba16_png

    with tempfile.TemporaryDirectory() as folder:
        png = write_rgba16_png(Path(folder) / "huge.png", args.side, args.side)
        print(f"{args.threads} threads, each decoding a {args.side} x {args.side} 16-bit RGBA PNG "
              f"of {png.stat().st_size / 1024:.0f} KB\n")
        rows = []
        for name, (min_side, trim) in CASES.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(png), str(args.threads), str(min_side),
                                  "1" if trim else "0"], capture_output=True, text=True, check=True)
            rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    base = rows[0][1]
    base_growth = base["peak"] - base["idle"]
    print(f"{'configuration':46} {'peak-idle MB':>12} {'vs before':>9} {'after-idle MB':>13} {'seconds':>8} "
          f"{'vs before':>9}")
    for name, r in rows:
        growth = r["peak"] - r["idle"]
        print(f"{name:46} {growth / 2**20:12.0f} {growth / base_growth:9.2f} {(r['after'] - r['idle']) / 2**20:13.0f} "
              f"{r['seconds']:8.1f} {r['seconds'] / base['seconds']:9.2f}")


if __name__ == "__main__":
    main()
