"""Zero-shot, fine-tuned and from-scratch models on real photos with human captions, scored on held-out photos.

    python -m captioner.build.photos /tmp/real-photos       # the real-photo set (Debian's gcompris-qt-data, ...)
    python benchmarks/finetune.py --data /tmp/real-photos    # the table: about 10 minutes on 2 CPU cores
    python benchmarks/finetune.py --data /tmp/real-photos --sweep   # what stops a new model memorising

The set's ``captions_train.json`` is what ``train`` gets, with every setting at its default
(validation images held out of it as ``train`` holds them out); ``captions_heldout.json`` is
captioned by each model afterwards (beam search, 3 beams, as ``caption`` does) and scored:
CIDEr-D and BLEU-4 (``evaluation.score_captions``, Python tokeniser), and the share of distinct
captions (a model that memorised gives a few captions to everything). The best constant caption
is the training caption scoring best on the held-out photos. ``--sweep`` trains new models
(``--from-scratch``) with one regularisation setting changed at a time, then all of them together.
Without ``--data``, ``tests/data`` is used: 17 photos whose validation captions describe the
training photos, so it says how well a model learns them, not how it does on new ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.core.inference import Captioner  # noqa: E402
from captioner.core.repository.storage import load_model  # noqa: E402
from captioner.training.config import (FINE_TUNING, FROM_SCRATCH, NO_REGULARISATION,  # noqa: E402
                                       Regularisation, TrainConfig)
from captioner.training.datasets import holdout_fraction, read_dataset, split_holdout  # noqa: E402
from captioner.training.evaluate import evaluate_captioner  # noqa: E402
from captioner.training.evaluation import score_captions, score_constant_captions  # noqa: E402
from captioner.training.job import train_captioner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def tests_data(folder: Path) -> tuple[Path, Path, Path]:
    import skimage

    (folder / "examples").symlink_to(ROOT / "examples")
    (folder / "skimage").symlink_to(Path(os.path.dirname(skimage.__file__)) / "data")
    return ROOT / "tests/data/captions_train.json", ROOT / "tests/data/captions_val.json", folder


def score(model_dir: Path | None, test, label: str) -> dict[str, object]:
    loaded = load_model(model_dir, "cpu")
    evaluation = evaluate_captioner(Captioner(loaded, torch.device("cpu")), test, beam_sizes=(3,), use_java=False,
                                    progress=False)
    captions = evaluation.captions["beam-3"]
    scores = evaluation.decodings["beam-3"]
    return {"run": label, "CIDEr-D": scores["CIDEr"], "BLEU-4": scores["BLEU-4"],
            "distinct": len(set(captions.values())) / len(captions), "examples": list(captions.values())[:4]}


def constant(train, test) -> dict[str, object]:
    references = {i.image_id: i.captions for i in test}
    candidates = sorted({" ".join(c.lower().split()) for i in train for c in i.captions})
    cider = score_constant_captions(references, candidates, "CIDEr")
    best = max(range(len(candidates)), key=lambda k: cider[k])
    scores = score_captions(references, {key: candidates[best] for key in references}, use_java=False)
    return {"run": f"the best constant caption ({candidates[best]!r})", "CIDEr-D": scores["CIDEr"],
            "BLEU-4": scores["BLEU-4"], "distinct": 1 / len(references), "examples": []}


def run(train, val, test, out: Path, label: str, config: TrainConfig) -> dict[str, object]:
    began = time.perf_counter()
    result = train_captioner(train, val, out, config, report=lambda line: None)
    row = score(out, test, label)
    row["epochs"] = f"{result.best_epoch}/{result.history[-1].epoch if result.history else 0}"
    row["minutes"] = (time.perf_counter() - began) / 60
    row["kept start"] = result.kept_start
    return row


def table(rows: list[dict[str, object]], constant_cider: float) -> str:
    lines = ["| run | CIDEr-D | vs best constant | BLEU-4 | distinct captions | best epoch / epochs | minutes |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['CIDEr-D']:.3f} | {row['CIDEr-D'] / constant_cider:.2f}x | "
                     f"{row['BLEU-4']:.3f} | {row['distinct']:.0%} | {row.get('epochs', '')} | "
                     f"{row['minutes']:.1f} |" if "minutes" in row else
                     f"| {row['run']} | {row['CIDEr-D']:.3f} | {row['CIDEr-D'] / constant_cider:.2f}x | "
                     f"{row['BLEU-4']:.3f} | {row['distinct']:.0%} | | |")
    return "\n".join(lines)


SWEEP = [
    ("no regularisation", NO_REGULARISATION, {}),
    ("dropout 0.5", dataclasses.replace(NO_REGULARISATION, dropout=0.5), {}),
    ("weight decay 0.05", dataclasses.replace(NO_REGULARISATION, weight_decay=0.05), {}),
    ("label smoothing 0.1", dataclasses.replace(NO_REGULARISATION, label_smoothing=0.1), {}),
    ("projection frozen", dataclasses.replace(NO_REGULARISATION, freeze_projection=True), {}),
    ("batch size 64", NO_REGULARISATION, {"batch_size": 64}),
    ("earlier plateau (patience 4)", NO_REGULARISATION, {"patience": 4}),
    ("dropout 0.5, weight decay 0.05, label smoothing 0.1", Regularisation(0.5, 0.05, 0.1), {}),
    ("the same, projection frozen", Regularisation(0.5, 0.05, 0.1, True), {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder of python -m captioner.build.photos (default: tests/data)")
    parser.add_argument("--sweep", action="store_true", help="regularisation of new models, one setting at a time")
    parser.add_argument("--rows", default=None, help="only these runs, e.g. 0,1 (numbered from 0)")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a machine busy with other work, more threads wait)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if args.data is None:
            train_file, test_file, images = tests_data(work)
        else:
            train_file, test_file, images = (args.data / "captions_train.json", args.data / "captions_heldout.json",
                                             args.data / "photos")
        items, _ = read_dataset("coco", train_file, images)
        test, _ = read_dataset("coco", test_file, images)
        train, val = split_holdout(items, holdout_fraction(len(items)), args.seed)  # as ``train`` holds them out
        print(f"{len(train)} training photos ({sum(len(i.captions) for i in train)} captions), {len(val)} validation, "
              f"{len(test)} held out for the table; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        base = TrainConfig(cache_dir=args.cache_dir or str(work / "features"), seed=args.seed, progress=False,
                           device="cpu")
        baseline = constant(train, test)
        began = time.perf_counter()
        rows = [baseline, {**score(None, test, "the bundled model, not trained (zero-shot)"),
                           "minutes": (time.perf_counter() - began) / 60}]
        if args.sweep:
            chosen = [int(n) for n in args.rows.split(",")] if args.rows else range(len(SWEEP))
            for label, regularisation, extra in (SWEEP[n] for n in chosen):
                config = dataclasses.replace(base, from_scratch=True, regularisation=regularisation, **extra)
                rows.append(run(train, val, test, work / f"sweep-{len(rows)}", f"from scratch, {label}", config))
                print(table(rows, baseline["CIDEr-D"]).splitlines()[-1], flush=True)
        else:
            runs = [("`train` with all defaults (fine-tunes the bundled model)", base),
                    ("fine-tuned, no regularisation", dataclasses.replace(base, regularisation=NO_REGULARISATION)),
                    ("`train --from-scratch` (defaults)", dataclasses.replace(base, from_scratch=True)),
                    ("from scratch, no regularisation",
                     dataclasses.replace(base, from_scratch=True, regularisation=NO_REGULARISATION)),
                    ("from scratch, no regularisation, 5% held out for validation",
                     dataclasses.replace(base, from_scratch=True, regularisation=NO_REGULARISATION)),
                    ("fine-tuned, learning rate 0.005", dataclasses.replace(base, lr=5e-3))]
            chosen = [int(n) for n in args.rows.split(",")] if args.rows else range(len(runs))
            for label, config in (runs[n] for n in chosen):
                if "5% held out" in label:  # the share held out before it was chosen from the data
                    few_train, few_val = split_holdout(items, 0.05, args.seed)
                    rows.append(run(few_train, few_val, test, work / f"run-{len(rows)}", label, config))
                else:
                    rows.append(run(train, val, test, work / f"run-{len(rows)}", label, config))
                print(table(rows, baseline["CIDEr-D"]).splitlines()[-1], flush=True)
        print(f"\nregularisation defaults: fine-tuning {FINE_TUNING}; from scratch {FROM_SCRATCH}\n")
        print(table(rows, baseline["CIDEr-D"]))
        print("\nFirst held-out captions of each run:")
        for row in rows[1:]:
            print(f"- {row['run']}: {' / '.join(map(str, row['examples']))}")


if __name__ == "__main__":
    main()
