"""Peak memory of ``load_image`` in a fresh process: ``measure(files, threads, min_side)`` runs
``python -m tests.helpers.decode_memory`` in a child, which decodes every file once on each of
``threads`` threads at the same time and reports its resident memory before, at the peak (the
kernel's high-water mark, reset after start-up: exact, not sampled) and after, in bytes, with the
outcome of each decode (the image's size or the ``ImageError`` message) and the budget's peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT


def measure(files: list[Path], threads: int = 1, min_side: int | None = None, env: dict | None = None) -> list[dict]:
    """One report per file, measured one file after another in the same child process."""
    command = [sys.executable, "-m", "tests.helpers.decode_memory", str(threads), str(min_side or 0),
               *(str(f) for f in files)]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=child_env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _resident(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def _main(threads: int, min_side: int, files: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from captioner.core.errors import ImageError
    from captioner.core.images import decode, memory

    def load(data: bytes) -> str:
        try:
            return "x".join(map(str, decode.load_image(data, min_side=min_side or None).size))
        except ImageError as error:
            return f"ImageError: {error}"

    reports = []
    with ThreadPoolExecutor(threads) as pool:  # threads started before the baseline, as a server's are
        list(pool.map(lambda _: None, range(threads)))
        for file in files:
            data = Path(file).read_bytes()
            idle = _resident()
            memory.DECODE_MEMORY.peak = 0
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # the high-water mark starts again from here
            outcomes = list(pool.map(load, [data] * threads))
            peak = _resident("VmHWM")
            reports.append({"file": Path(file).name, "idle": idle, "peak": peak - idle, "after": _resident() - idle,
                            "outcomes": outcomes, "budget_peak": memory.DECODE_MEMORY.peak,
                            "budget": memory.DECODE_MEMORY.capacity})
    print(json.dumps(reports))


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
