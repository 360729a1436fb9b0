"""Memory of decoding worst-case images: 16 threads of one pool (as a web server's workers) each
load a 7000 x 7000 16-bit RGBA PNG (a few hundred KB on disk), at full size versus reduced early
(``min_side``), with and without handing freed memory back (large Pillow blocks, small reduction
bands, ``malloc_trim``). Every case runs under the byte semaphore. Prints one table from one run.

    python benchmarks/decode_memory.py [--threads 16] [--side 7000]

Each configuration runs in its own process so that one cannot inherit another's heap. The first
configuration (full size, memory kept: as before bounded decoding, except that the semaphore runs
one decode at a time) peaks near 13 GB with
16 threads; use --threads 4 on a smaller machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CASES = {  # name: (min_side, hand memory back after large decodes)
    "full size, memory kept": (None, False),
    "full size, memory handed back": (None, True),
    "reduced (min_side=512), memory kept": (512, False),
    "reduced (min_side=512), handed back (app)": (512, True),
}


def measure(path: str, threads: int, min_side: int | None, trim: bool) -> dict:
    """Run in a child process: RSS before, peak during and after the concurrent decodes."""
    import psutil

    from captioner.core.images import decode, memory

    if not trim:  # Pillow's default 16 MB blocks, large bands, no malloc_trim
        memory.TRIM_AFTER_BYTES = decode.TRIM_AFTER_BYTES = 1 << 62
        decode._REDUCE_BAND_BYTES = 32 * 1024 * 1024
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
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: decode.load_image(data, min_side=min_side).size, range(threads)))
        seconds = time.perf_counter() - start
        time.sleep(1)
        done.set()
        sampler.join()
        after = process.memory_info().rss  # the pool's threads still alive, as a server's are
    return {"idle": idle, "peak": peak, "after": after, "seconds": seconds,
            "semaphore_peak": memory.DECODE_MEMORY.peak}


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
    base = rows[0][1]  # full size with memory kept: what decoding cost before
    base_growth = base["peak"] - base["idle"]
    print(f"{'configuration':46} {'peak-idle MB':>12} {'vs first':>9} {'after-idle MB':>13} {'seconds':>8} "
          f"{'vs first':>9}")
    for name, r in rows:
        growth = r["peak"] - r["idle"]
        print(f"{name:46} {growth / 2**20:12.0f} {growth / base_growth:9.2f} {(r['after'] - r['idle']) / 2**20:13.0f} "
              f"{r['seconds']:8.1f} {r['seconds'] / base['seconds']:9.2f}")


if __name__ == "__main__":
    main()
