"""What explaining a caption costs next to captioning the same image, in one run.

    python benchmarks/explain_cost.py                  # the bundled model on CPU, examples/*.jpg
    python benchmarks/explain_cost.py --clock cpu --threads 1   # ratios that a busy machine does not skew

Per photo (decoded from its file each time, as a user's call would): ``caption`` (beam 3), ``explain``
(captions with beam 3, then every word's heatmap at the decoded photo's size, at most 1024 pixels on
the longer side), ``explain`` of a given caption, and ``score`` of that caption. The calls alternate,
so that a busy machine slows each alike; each time is the median of ``--repeats`` runs after one
warm-up. Target: explain <= 4x caption.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.inference import load_captioner  # noqa: E402
from tables import Table, add_clock_options, chosen_clock, cpu_name  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory or owner/name (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    add_clock_options(parser, "wall: elapsed time (default); cpu: this process's CPU time",
                      "torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = chosen_clock(args)
    captioner = load_captioner(args.model, args.device)
    photos = sorted((ROOT / "examples").glob("*.jpg"))
    table = Table(f"Explain vs caption ({captioner.config.backbone}, {args.device}, {cpu_name()}, "
                  f"{torch.get_num_threads()} threads, {args.clock} clock)",
                  ["Photo", "Words", "Caption (ms)", "Explain / caption", "Explain given caption / caption",
                   "Score / caption"])
    ratios = []
    for photo in photos:
        caption = captioner(photo, beam_size=3).caption
        calls = {"caption": lambda: captioner(photo, beam_size=3),
                 "explain": lambda: captioner.explain(photo, beam_size=3),
                 "given": lambda: captioner.explain(photo, caption),
                 "score": lambda: captioner.score(photo, caption)}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for repeat in range(args.repeats + 1):
            for name, call in calls.items():
                start = clock()
                call()
                if repeat:  # the first round warms up
                    times[name].append(clock() - start)
        median = {name: statistics.median(values) for name, values in times.items()}
        ratio = median["explain"] / median["caption"]
        ratios.append(ratio)
        table.rows.append([photo.name, len(caption.split()), median["caption"] * 1000, ratio,
                           median["given"] / median["caption"], median["score"] / median["caption"]])
    table.rows.append(["median", "", "", statistics.median(ratios), "", ""])
    table.notes.append(f"Target: explain <= 4x caption; largest ratio here {max(ratios):.2f}x.")
    print(table.markdown())


if __name__ == "__main__":
    main()
