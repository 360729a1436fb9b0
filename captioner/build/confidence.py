"""``python -m captioner.build.confidence MODEL_DIR PHOTOS``: calibrate a classifier model's confidence.

Writes ``caption_phrases.json`` (``build.phrases``) into the model folder, fits the class-mass map
and the thresholds of saying less on the training split of a real-photo set
(``python -m captioner.build.photos PHOTOS``), measures them on its held-out split and by
cross-validation, and records the fit in ``config.json`` (``extra.confidence``) and the numbers in
the model card's "Confidence" section. The weights file is not touched (checked by its SHA-256).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from captioner.build.calibration import Judged, Observation, cross_validated, fit_rule, judge_all, observe, summary
from captioner.build.imagenet import wordnet
from captioner.build.photos.judge import CaptionJudge
from captioner.build.phrases import write_phrase_file
from captioner.core.confidence import ClassMassRule
from captioner.core.confidence.phrases import PhraseTable
from captioner.core.errors import CaptionerError
from captioner.core.files import file_sha256
from captioner.core.inference import Captioner
from captioner.core.model.config import ModelConfig
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, load_model

SECTION = "## Confidence"


def calibrate(model_dir: Path, photoset: Path, progress=print) -> dict[str, Any]:
    """Fit, measure and record; returns the measurements."""
    weights = model_dir / "model.safetensors"
    digest = file_sha256(weights)
    phrases = write_phrase_file(model_dir)
    loaded = load_model(model_dir, "cpu")
    if not loaded.config.emits_classes:
        raise CaptionerError(f"{model_dir}: its encoder is not a classifier; train fits a temperature instead")
    captioner = Captioner(loaded, torch.device("cpu"), "torch")
    progress(f"captioning the photos of {photoset} ...")
    observed = observe(captioner, photoset, progress=lambda done, total: progress(f"  {done}/{total}"))
    table, judge = PhraseTable.load(phrases), CaptionJudge(wordnet())
    train = [o for o in observed if o.split == "train"]
    rule = fit_rule(train, table, judge)
    report = measurements(observed, rule, table, judge)
    config = ModelConfig.load(model_dir / "config.json")
    config.extra["confidence"] = {
        "rule": "class_mass", "calibration": {"slope": round(rule.slope, 6), "intercept": round(rule.intercept, 6),
                                               "general": round(rule.general, 6)},
        "specific_below": rule.specific_below, "nothing_below": rule.nothing_below,
        "fitted_on": f"the training split of the real-photo set ({len(train)} photos; "
                     "python -m captioner.build.photos)"}
    config.save(model_dir / "config.json")
    card = model_dir / "README.md"
    card.write_text(with_section(card.read_text(encoding="utf-8"), card_section(report, rule, len(train))),
                    encoding="utf-8")
    if file_sha256(weights) != digest:
        raise CaptionerError(f"{weights} changed while calibrating")
    return report


def measurements(observed: Sequence[Observation], rule: ClassMassRule, table: PhraseTable, judge: CaptionJudge
                 ) -> dict[str, Any]:
    held = [o for o in observed if o.split == "heldout"]

    def judged(photos, when_unsure) -> list[Judged]:
        return judge_all(photos, rule, when_unsure, judge)

    return {
        "heldout": {mode: summary(judged(held, mode)) for mode in ("generalise", "keep")},
        "cross_validated": {mode: summary(cross_validated(observed, table, judge, mode))
                            for mode in ("generalise", "keep")},
    }


def card_section(report: dict[str, Any], rule: ClassMassRule, train_photos: int) -> str:
    rows = []
    for name, numbers in (("held-out", report["heldout"]), ("all, 10-fold cross-validated", report["cross_validated"])):
        for mode in ("generalise", "keep"):
            n = numbers[mode]
            rows.append(f"| {name} | {mode} | {n['photos']} | {n['ece']:.3f} | {n['ece_by_chance']:.3f} | "
                        f"{n['auroc']:.3f} | {n['mean_confidence']:.2f} | {n['right']:.0%} | "
                        f"{n['right_of_answered']:.0%} | {n['said_less']:.0%} | {n['nothing']:.0%} |")
    return f"""{SECTION}

`confidence` is a calibrated probability that the caption is right. It starts from the classifier's
probability that one of the things the caption names is in the photo (each phrase's classes summed;
`caption_phrases.json` says which classes a phrase names), mapped by a logistic fit on its logit
(slope {rule.slope:.3f}, intercept {rule.intercept:.3f}, {rule.general:+.3f} when the caption uses a
general word) on the training split of the project's real-photo set ({train_photos} photos). A caption
counts as right when one of its nouns is, in WordNet, the described thing, a kind of it, or a near or
basic-level generalisation of it.

When unsure (`when_unsure="generalise"`, the default) a specific phrase whose own confidence is below
{rule.specific_below:.2f} (below it, this model's specific captions were more often wrong than right)
is replaced by its general word when the classifier gives that more mass ("a bird" for "a house
finch"), and a caption whose confidence stays below {rule.nothing_below:.3f} (below it, at most one
caption in ten was right) becomes "nothing the model recognises".

Measured by `python -m captioner.build.confidence` (as `benchmarks/calibration.py` does): ECE over 10
bins, "ECE by chance" the ECE a perfectly calibrated confidence shows on that many photos, AUROC of
right against wrong captions. The confidence of "nothing the model recognises" is judged against
the caption it declined; "right" counts it as not right, "right of answered" leaves it out.

| photos | when unsure | photos | ECE | ECE by chance | AUROC | mean confidence | right | right of answered | said less | nothing recognised |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def with_section(card: str, section: str) -> str:
    """The card with its confidence section replaced (or put before "## Training", else at the end)."""
    existing = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", card, flags=re.S | re.M)
    if existing:
        return card[: existing.start()] + section + "\n" + card[existing.end():]
    training = re.search(r"^## Training\b", card, flags=re.M)
    if training:
        return card[: training.start()] + section + "\n" + card[training.start():]
    return card.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner.build.confidence", description=__doc__)
    parser.add_argument("photos", type=Path, help="a real-photo set (python -m captioner.build.photos DIR)")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR, help="the model folder (default: bundled)")
    args = parser.parse_args(argv)
    try:
        report = calibrate(args.model, args.photos)
    except CaptionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split in ("heldout", "cross_validated"):
        for mode, numbers in report[split].items():
            print(f"{split:16} {mode:10} ECE {numbers['ece']:.3f} AUROC {numbers['auroc']:.3f} "
                  f"right {numbers['right']:.0%} (of answered {numbers['right_of_answered']:.0%}) "
                  f"said less {numbers['said_less']:.0%} nothing {numbers['nothing']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
