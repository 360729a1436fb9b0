"""Is `confidence` a probability that the caption is right? Measured on the real-photo set.

    python -m captioner.build.photos /tmp/photos                 # build the set once (see its README)
    python benchmarks/calibration.py /tmp/photos                  # the bundled model
    python benchmarks/calibration.py /tmp/photos --model DIR --diagram docs/confidence-reliability.png

Every photo is captioned once (beam 3); a caption is right when one of its nouns is, in WordNet, the
described thing, a kind of it, or a near or basic-level generalisation of it (``photos.judge``).
Printed: ECE (10 bins) and AUROC (right against wrong) of the model's `confidence` on the set's
held-out photos (the shipped fit saw only the training photos) and over all photos by 10-fold
cross-validation of the whole fitting procedure; next to them the decoder's own sequence probability
(`exp(score)`) and the classifier's top-1 probability; "ECE by chance" is the ECE a perfectly
calibrated confidence shows on that many photos (mean of 2000 draws), the noise floor. Then the
risk-coverage table and what saying less when unsure does (`when_unsure` generalise against keep).
The confidence of "nothing the model recognises" is judged against the caption it declined.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.build.calibration import Judged, Observation, cross_validated, judge_all, observe, summary  # noqa: E402
from captioner.build.imagenet import wordnet  # noqa: E402
from captioner.build.photos.judge import CaptionJudge  # noqa: E402
from captioner.core.confidence import ClassMassRule  # noqa: E402
from captioner.core.confidence.measure import (  # noqa: E402
    auroc,
    ece_by_chance,
    expected_calibration_error,
    reliability,
    risk_coverage,
)
from captioner.core.inference import load_captioner  # noqa: E402
from tables import Table  # noqa: E402

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def baseline(observed: Sequence[Observation], judge: CaptionJudge, which: str) -> tuple[list[float], list[bool]]:
    """The decoded captions' right/wrong with the decoder's exp(score) or the classifier's top-1 probability."""
    confidence, right = [], []
    for o in observed:
        best = o.decoded[0]
        if which == "top-1" and o.probabilities is None:
            continue
        confidence.append(math.exp(best.score) if which == "exp(score)" else float(o.probabilities.max()))
        right.append(judge.is_right(best.caption, o.subjects))
    return confidence, right


def quality_rows(name: str, judged_by_mode: dict[str, list[Judged]], observed, judge) -> list[list]:
    rows = []
    for mode, judged in judged_by_mode.items():
        numbers = summary(judged)
        scored = [j.confidence for j in judged if j.confidence is not None]
        rows.append([f"`confidence`, when_unsure={mode}", len(scored), numbers["ece"], ece_by_chance(scored),
                     numbers["auroc"], numbers["mean_confidence"], numbers["right"]])
    for which in ("exp(score)", "top-1"):
        confidence, right = baseline(observed, judge, which)
        if confidence:
            label = "decoder's exp(score)" if which == "exp(score)" else "classifier's top-1 probability"
            rows.append([label, len(confidence), expected_calibration_error(confidence, right), ece_by_chance(confidence),
                         auroc(confidence, right), float(np.mean(confidence)), float(np.mean(right))])
    return rows


def draw_diagram(path: Path, curves: dict[str, tuple[list[float], list[bool]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    axis.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfectly calibrated")
    for (label, (confidence, right)), marker in zip(curves.items(), "osv^"):
        bins = reliability(confidence, right)
        axis.plot([b[1] for b in bins], [b[2] for b in bins], marker=marker, linewidth=1.5,
                  label=f"{label} (ECE {expected_calibration_error(confidence, right):.2f})")
        for _, mean, share, count in bins:
            axis.annotate(str(count), (mean, share), textcoords="offset points", xytext=(4, -10), fontsize=6)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (mean of the bin)")
    axis.set_ylabel("share of captions that are right")
    axis.set_title("Reliability on real photos (10 bins; numbers: captions)", fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, help="a real-photo set (python -m captioner.build.photos DIR)")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the bundled model)")
    parser.add_argument("--diagram", type=Path, default=None, help="write the reliability diagram (PNG) here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    captioner = load_captioner(args.model, device="cpu", backend="torch")
    rule = captioner.confidence
    judge = CaptionJudge(wordnet())
    print(f"model: {captioner.loaded.source}; confidence rule: {rule.name}; photos: {args.photos}", file=sys.stderr)
    observed = observe(captioner, args.photos, progress=lambda d, t: print(f"  captioned {d}/{t}", file=sys.stderr))
    held = [o for o in observed if o.split == "heldout"]
    modes = ("generalise", "keep") if isinstance(rule, ClassMassRule) else ("keep",)

    tables = []
    held_judged = {mode: judge_all(held, rule, mode, judge) for mode in modes}
    headers = ["confidence of", "captions", "ECE", "ECE by chance", "AUROC", "mean confidence", "right"]
    tables.append(Table(f"Held-out photos ({len(held)}; the shipped fit saw only the {len(observed) - len(held)} "
                        "training photos)", headers, quality_rows("held-out", held_judged, held, judge)))
    curves: dict[str, tuple[list[float], list[bool]]] = {}
    if isinstance(rule, ClassMassRule):
        cv = {mode: cross_validated(observed, rule.table, judge, mode) for mode in modes}
        tables.append(Table(f"All {len(observed)} photos, 10-fold cross-validated (map and thresholds fitted on the "
                            "other nine folds)", headers, quality_rows("cv", cv, observed, judge)))
        source, note = cv, "all photos, cross-validated"
    else:
        source, note = {mode: judge_all(observed, rule, mode, judge) for mode in modes}, "all photos"
    for mode, judged in source.items():
        scored = [j for j in judged if j.confidence is not None]
        curves[f"confidence, {mode}"] = ([j.confidence for j in scored], [j.claim_right for j in scored])
    curves["decoder's exp(score)"] = baseline(observed, judge, "exp(score)")

    coverage = Table(f"Risk-coverage ({note}): keep only the most confident captions",
                     ["coverage", *[f"risk ({label})" for label in curves], *[f"least kept ({label})" for label in curves]])
    per_curve = [risk_coverage(*curves[label], COVERAGES) for label in curves]
    for index, share in enumerate(COVERAGES):
        coverage.rows.append([f"{share:.0%}", *[rows[index][1] for rows in per_curve],
                              *[rows[index][2] for rows in per_curve]])
    coverage.notes.append("risk: share of the kept captions that are wrong; least kept: the confidence of the "
                          "least confident caption kept")
    tables.append(coverage)

    unsure = Table(f"Saying less when unsure ({note})", ["when_unsure", "right", "right of those answered",
                                                          "specific caption given up", "nothing recognised"])
    for mode, judged in source.items():
        numbers = summary(judged)
        unsure.rows.append([mode, f"{numbers['right']:.1%}", f"{numbers['right_of_answered']:.1%}",
                            f"{numbers['said_less']:.1%}", f"{numbers['nothing']:.1%}"])
    if isinstance(rule, ClassMassRule):
        unsure.notes.append(f"shipped thresholds: a specific phrase below {rule.specific_below:.2f} becomes its general "
                            f"word when the classifier gives that more mass; below {rule.nothing_below:.3f}: "
                            "\"nothing the model recognises\"")
    tables.append(unsure)
    for table in tables:
        print(table.markdown(), end="\n\n")
    if args.diagram is not None:
        draw_diagram(args.diagram, curves)
        print(f"reliability diagram: {args.diagram}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
