"""Fitting and measuring a classifier model's confidence on the real-photo set.

``observe`` captions every photo of a set (``captioner.build.photos``) once with the model's
decoder, keeping the classifier's probabilities; everything else works on those observations, so a
fit, its thresholds and its measurements cost no second pass. A caption is judged right or wrong by
``photos.judge`` against the photo's described thing.

The fit (``python -m captioner.build.confidence``): the logistic map of the log mass of what the
decoded captions name, on the set's training split; then the two thresholds of saying less, read
off the training split's curves. Measurements are on the held-out split, and by 10-fold
cross-validation of the whole procedure over every photo.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from captioner.build.photos.judge import CaptionJudge
from captioner.core.captions import caption_features, class_probabilities
from captioner.core.confidence import NOTHING_RECOGNISED, UNCALIBRATED, ClassMassRule
from captioner.core.confidence.measure import (
    auroc,
    ece_by_chance,
    expected_calibration_error,
    fit_logistic,
    reliability,
)
from captioner.core.confidence.phrases import PhraseTable
from captioner.core.confidence.rules import logit
from captioner.core.inference import Captioner
from captioner.core.options import DecodeOptions
from captioner.core.results import Candidate

SPECIFIC_RIGHT_AT_LEAST = 0.5  # a specific caption is given where it is right at least this often
NOTHING_RIGHT_AT_MOST = 0.1  # "nothing recognised" only where captions are this rarely right
FOLDS = 10


@dataclass(frozen=True)
class Observation:
    key: str
    split: str
    subjects: tuple[str, ...]
    probabilities: np.ndarray | None  # the classifier's, for classifier encoders
    decoded: tuple[Candidate, ...]  # the decoder's beam candidates, best first


@dataclass(frozen=True)
class Judged:
    key: str
    caption: str  # the caption given
    claim: str  # what its confidence is about: the caption, or the one "nothing recognised" declined
    decoded: str  # the decoder's own caption
    confidence: float | None
    right: bool  # the caption given is right ("nothing recognised" never is)
    claim_right: bool

    @property
    def nothing(self) -> bool:
        return self.caption == NOTHING_RECOGNISED

    @property
    def said_less(self) -> bool:
        """A specific caption given up for a more general one (not counting "nothing recognised")."""
        return not self.nothing and self.caption != self.decoded


def manifest(photoset: Path) -> list[dict]:
    return [json.loads(line) for line in (photoset / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@torch.inference_mode()
def observe(captioner: Captioner, photoset: Path, options: DecodeOptions | None = None,
            progress: Callable[[int, int], None] | None = None, batch_size: int = 16) -> list[Observation]:
    """Each photo's decoded captions and class probabilities (one forward pass per batch)."""
    entries = manifest(photoset)
    options = (options or DecodeOptions()).resolved(captioner.config.max_length)
    observed: list[Observation] = []
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        pixels, kept, failures = captioner.pipeline.load([photoset / e["file"] for e in chunk])
        if failures:
            raise ValueError(f"photos of the set could not be read: {failures}")
        features = captioner.pipeline.features(pixels)
        results = caption_features(captioner.model, captioner.vocab, features, options, confidence=UNCALIBRATED)
        probabilities = class_probabilities(features, captioner.config.encoder_output)
        for row, (entry, result) in enumerate(zip(chunk, results)):
            observed.append(Observation(entry["key"], entry["split"], tuple(s["synset"] for s in entry["subjects"]),
                                        None if probabilities is None else probabilities[row], result.candidates))
        if progress:
            progress(min(start + batch_size, len(entries)), len(entries))
    return observed


def judge_all(observed: Sequence[Observation], rule, when_unsure: str, judge: CaptionJudge) -> list[Judged]:
    """The caption ``rule`` gives each photo, judged (and, for "nothing recognised", the caption it declined)."""
    declining = replace(rule, nothing_below=0.0) if isinstance(rule, ClassMassRule) else rule
    out = []
    for o in observed:
        given = _first(rule.assess(o.decoded, o.probabilities, when_unsure)) or o.decoded[0]
        claim = given
        if given.caption == NOTHING_RECOGNISED:
            claim = _first(declining.assess(o.decoded, o.probabilities, when_unsure)) or o.decoded[0]
        claim_right = judge.is_right(claim.caption, o.subjects)
        out.append(Judged(o.key, given.caption, claim.caption, given.decoded or given.caption, given.confidence,
                          claim_right and claim is given, claim_right))
    return out


def _first(candidates: Sequence[Candidate]) -> Candidate | None:
    return candidates[0] if candidates else None


def fit_rule(train: Sequence[Observation], table: PhraseTable, judge: CaptionJudge) -> ClassMassRule:
    """Fitted on the training photos: the map on the decoded captions; the threshold of saying less
    from its reliability curve; the map again on the decoded captions and those said with that
    threshold together (so that one map is calibrated for both ``when_unsure`` modes); then the
    threshold of "nothing recognised"."""
    decoded = _examples(train, table, judge, None)
    first = ClassMassRule(table, *_fit_map(decoded), specific_below=0.0, nothing_below=0.0)
    specific = choose_specific_below(train, first, judge)
    slope, general, intercept = fit_logistic(*_columns(decoded + _examples(train, table, judge, specific)))
    nothing = choose_nothing_below(train, ClassMassRule(table, slope, intercept, general, specific, 0.0), judge)
    return ClassMassRule(table, slope, intercept, general, specific, nothing)


def _fit_map(examples: list[tuple[float, bool, bool]]) -> tuple[float, float, float]:
    """(slope, intercept, general) of the map on (logit mass, general word, right) examples."""
    slope, general, intercept = fit_logistic(*_columns(examples))
    return slope, intercept, general


def _columns(examples: list[tuple[float, bool, bool]]) -> tuple[list[tuple[float, float]], list[bool]]:
    return [(x, float(general)) for x, general, _ in examples], [right for _, _, right in examples]


def _examples(train: Sequence[Observation], table: PhraseTable, judge: CaptionJudge, specific_below: float | None
              ) -> list[tuple[float, bool, bool]]:
    """(logit of the mass, whether it uses a general word, right) of each training photo's caption:
    the decoded one (``None``) or the one said with ``specific_below``. Captions outside the grammar
    go to the next rule and are not this map's to fit."""
    measuring = ClassMassRule(table, 1.0, 0.0, 0.0, specific_below or 0.0, 0.0)
    mode = "keep" if specific_below is None else "generalise"
    examples = []
    for o in train:
        given = _first(measuring.assess(o.decoded, o.probabilities, mode))
        features = None if given is None else measuring.features(given.caption, o.probabilities)
        if features is not None:
            examples.append((logit(features[0]), features[1], judge.is_right(given.caption, o.subjects)))
    return examples


def specific_curve(observed: Sequence[Observation], rule: ClassMassRule, judge: CaptionJudge
                   ) -> list[tuple[float, float, float, int]]:
    """The reliability curve of the decoded (specific) captions: per confidence bin (10 bins), its
    centre, mean confidence, share right and number of captions."""
    judged = judge_all(observed, rule, "keep", judge)
    scored = [j for j in judged if j.confidence is not None]
    return reliability([j.confidence for j in scored], [j.right for j in scored])


def choose_specific_below(observed: Sequence[Observation], rule: ClassMassRule, judge: CaptionJudge) -> float:
    """The least confidence from which the decoded captions are right at least half the time in every
    bin of their reliability curve: below it a specific caption is more often wrong than right."""
    threshold = 1.0
    for centre, _, share, _ in reversed(specific_curve(observed, rule, judge)):
        if share < SPECIFIC_RIGHT_AT_LEAST:
            break
        threshold = centre - 0.05
    return round(threshold, 2)


def choose_nothing_below(observed: Sequence[Observation], rule: ClassMassRule, judge: CaptionJudge) -> float:
    """The highest confidence below which (after saying less) captions are right at most
    ``NOTHING_RIGHT_AT_MOST`` of the time: there the model recognises nothing it can name."""
    judged = judge_all(observed, rule, "generalise", judge)
    pairs = sorted((j.confidence, j.right) for j in judged if j.confidence is not None)
    chosen, right = 0.0, 0
    for count, (confidence, hit) in enumerate(pairs, 1):
        right += hit
        if right / count <= NOTHING_RIGHT_AT_MOST:
            nxt = pairs[count][0] if count < len(pairs) else confidence
            chosen = round((confidence + nxt) / 2, 4)  # between this caption and the next
    return chosen


def cross_validated(observed: Sequence[Observation], table: PhraseTable, judge: CaptionJudge, when_unsure: str,
                    folds: int = FOLDS, seed: int = 0) -> list[Judged]:
    """Every photo judged with a rule fitted (map and thresholds) on the other folds."""
    order = np.random.default_rng(seed).permutation(len(observed))
    judged: dict[int, Judged] = {}
    for fold in range(folds):
        held = set(order[fold::folds].tolist())
        rule = fit_rule([o for i, o in enumerate(observed) if i not in held], table, judge)
        for i in sorted(held):
            judged[i] = judge_all([observed[i]], rule, when_unsure, judge)[0]
    return [judged[i] for i in range(len(observed))]


def summary(judged: Sequence[Judged]) -> dict[str, float]:
    """ECE (10 bins) and AUROC of the confidence against whether what it is about is right (for
    "nothing recognised", the caption declined), and the shares a report shows."""
    scored = [j for j in judged if j.confidence is not None]
    confidence = [j.confidence for j in scored]
    right = [j.claim_right for j in scored]
    answered = [j for j in judged if not j.nothing]
    return {
        "photos": len(judged), "scored": len(scored),
        "ece": expected_calibration_error(confidence, right), "ece_by_chance": ece_by_chance(confidence),
        "auroc": auroc(confidence, right), "mean_confidence": float(np.mean(confidence)),
        "right": float(np.mean([j.right for j in judged])),
        "right_of_answered": float(np.mean([j.right for j in answered])) if answered else float("nan"),
        "said_less": float(np.mean([j.said_less for j in judged])),
        "nothing": float(np.mean([j.nothing for j in judged])),
    }
