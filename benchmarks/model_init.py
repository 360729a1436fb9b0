"""How to build a model whose weights are loaded next: the ways that need no global patching of
``torch.nn.init``, each timed in a fresh process (a command line call builds one model per process).

    python benchmarks/model_init.py [--repeats 3]

- ``random init``: modules built as usual (random initialisation), then the weights assigned.
- ``meta device``: modules built under ``torch.device("meta")`` (no initialisation), then
  ``load_state_dict(assign=True)``; its first ``normal_`` on a meta tensor loads torch's reference
  kernels, once per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import Table, cpu_name  # noqa: E402

CHILD = """
import json, sys, time, torch
from captioner.core.config import ModelConfig
from captioner.core.model.network import ShowAndTell
config = ModelConfig(backbone=sys.argv[1], vocab_size=10000, encoder_output=sys.argv[2])

def build_seconds():
    start = time.perf_counter()
    if sys.argv[3] == "meta":
        with torch.device("meta"):
            ShowAndTell(config)
    else:
        ShowAndTell(config)
    return time.perf_counter() - start

print(json.dumps([build_seconds(), build_seconds()]))
"""


def measure(backbone: str, output: str, how: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CHILD, backbone, output, how], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = Table(f"Building a model before its weights are loaded ({cpu_name()}), median of {args.repeats} "
                  "fresh processes", ["backbone", "way", "first model in a process (ms)", "next model (ms)"])
    for backbone, output in (("efficientnet-lite0", "class_probs"), ("resnet152", "features")):
        for how in ("random init", "meta"):
            runs = [measure(backbone, output, how) for _ in range(args.repeats)]  # alternating is not needed:
            table.rows.append([backbone, "meta device" if how == "meta" else how,  # each run is its own process
                               statistics.median(r[0] for r in runs) * 1000,
                               statistics.median(r[1] for r in runs) * 1000])
    print(table.markdown())


if __name__ == "__main__":
    main()
