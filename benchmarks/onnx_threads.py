"""Whole captions with the ONNX backend under several thread-pool settings, against the torch backend.

    python benchmarks/onnx_threads.py               # torch's default threads (one per core)
    python benchmarks/onnx_threads.py --threads 1

ONNX Runtime's intra-op threads spin while they wait for work, by default also after a run has
ended. A caption alternates ONNX Runtime runs (the backbone, then one decoder step per word) with
torch and Python work (preprocessing, the decoding loop), so threads still spinning after a run
take cores that this work needs, and a pool that sleeps between runs must be woken for each step.
Compared, on the same loaded model and photos, alternating, for the backbone's and the decoder
step's sessions:

- ``spin after runs``: ONNX Runtime's default;
- ``no spinning``: ``session.intra_op.allow_spinning = 0``;
- ``spin within a run``: spinning between the operators of one run, stopped when it ends
  (``session.force_spinning_stop = 1``, ``onnx_sessions.SESSION_CONFIG``);
- the same with the decoder step on the calling thread alone (``onnx_sessions.STEP_THREADS``): the
  library's setting.

The cached export is written to a temporary directory, not the user's cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from captioner.core.backends import sessions as onnx_sessions  # noqa: E402
from captioner.core.inference import Captioner  # noqa: E402
from captioner.core.repository.storage import load_model  # noqa: E402
from tables import Table  # noqa: E402

SETTINGS = {  # name: (session config, the decoder step's intra-op threads; None: torch's)
    "spin after runs (ONNX Runtime's default)": ({"session.intra_op.allow_spinning": "1"}, None),
    "no spinning": ({"session.intra_op.allow_spinning": "0"}, None),
    "spin within a run": (onnx_sessions.SESSION_CONFIG, None),
    "spin within a run, step on the calling thread (the library's)": (onnx_sessions.SESSION_CONFIG,
                                                                       onnx_sessions.STEP_THREADS),
}
GAP_S = 0.02  # idle time before each timed call, so that no setting's spinning is charged to the next


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime as ort

    photos = sorted((ROOT / "examples").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as cache:
        os.environ["CAPTIONER_CACHE"] = cache
        torch_captioner = Captioner(load_model(args.model, "cpu"), torch.device("cpu"), "torch")
        onnx_captioner = Captioner(load_model(args.model, "cpu"), torch.device("cpu"), "onnx")
        backend = onnx_captioner.pipeline.onnx
        sessions = {name: tuple(ort.InferenceSession(str(path), onnx_sessions.session_options(config, threads),
                                                     providers=["CPUExecutionProvider"])
                                for path, threads in ((backend.path, None), (backend.step_path, step_threads)))
                    for name, (config, step_threads) in SETTINGS.items()}

        def caption_with(name: str | None, beam: int):
            def run(r: int) -> None:
                if name is None:
                    torch_captioner(photos[r % len(photos)], beam_size=beam)
                    return
                backend.session, onnx_captioner.pipeline.onnx.steps.step.session = sessions[name]
                onnx_captioner(photos[r % len(photos)], beam_size=beam)
            return run

        rows = [(name, beam) for beam in (1, 3) for name in [None, *SETTINGS]]
        times: dict[tuple, list[float]] = {row: [] for row in rows}
        for r in range(args.rounds + 1):  # the first round warms up, untimed
            for row in rows[r % len(rows):] + rows[:r % len(rows)]:
                run = caption_with(*row)
                time.sleep(GAP_S)
                start = time.perf_counter()
                run(r)
                if r:
                    times[row].append(time.perf_counter() - start)

    table = Table(f"Whole captions by ONNX Runtime thread setting ({torch.get_num_threads()} intra-op threads, "
                  f"median of {args.rounds} rounds, wall time)", ["backend, setting", "decoding", "median ms",
                                                                  "x torch"])
    for name, beam in rows:
        median = statistics.median(times[name, beam])
        reference = statistics.median(times[None, beam])
        table.rows.append([name and f"onnx, {name}" or "torch", "greedy" if beam == 1 else f"beam {beam}",
                           round(median * 1000, 1), round(median / reference, 2)])
    print(table.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
