"""Measuring and fitting confidence: calibration error, ranking, risk-coverage, the two fitted maps.

Numbers in, numbers out (numpy only), shared by the calibration benchmark, the bundled model's build
(which fits the class-mass map) and training (which fits a temperature at the end of a run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def expected_calibration_error(confidence: Sequence[float], right: Sequence[bool], bins: int = 10) -> float:
    """ECE: over ``bins`` equal-width confidence bins, the share-weighted gap between each bin's mean
    confidence and its share of right captions (Guo et al., 2017)."""
    conf, hit = _arrays(confidence, right)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - hit[inside].mean())
    return float(total)


def ece_by_chance(confidence: Sequence[float], draws: int = 2000, seed: int = 0) -> float:
    """The mean ECE of labels drawn right with exactly the stated probability: what a perfectly
    calibrated confidence shows on this many captions (the noise floor of ECE at this size)."""
    conf, _ = _arrays(confidence, [False] * len(confidence))
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(conf, rng.random(len(conf)) < conf) for _ in range(draws)]))


def auroc(confidence: Sequence[float], right: Sequence[bool]) -> float:
    """The chance that a right caption has a higher confidence than a wrong one (ties count half)."""
    conf, hit = _arrays(confidence, right)
    good, bad = conf[hit == 1], conf[hit == 0]
    if not len(good) or not len(bad):
        return float("nan")
    ranks = _ranks(np.concatenate([good, bad]))
    return float((ranks[: len(good)].sum() - len(good) * (len(good) + 1) / 2) / (len(good) * len(bad)))


def risk_coverage(confidence: Sequence[float], right: Sequence[bool], coverages: Sequence[float]
                  ) -> list[tuple[float, float, float]]:
    """(coverage, risk, least confidence kept) when only the most confident share of captions is kept."""
    conf, hit = _arrays(confidence, right)
    order = np.argsort(-conf, kind="stable")
    rows = []
    for coverage in coverages:
        kept = max(1, int(round(coverage * len(conf))))
        chosen = order[:kept]
        rows.append((kept / len(conf), float(1 - hit[chosen].mean()), float(conf[chosen].min())))
    return rows


def reliability(confidence: Sequence[float], right: Sequence[bool], bins: int = 10
                ) -> list[tuple[float, float, float, int]]:
    """Per bin: (bin centre, mean confidence, share right, captions); empty bins left out."""
    conf, hit = _arrays(confidence, right)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    return [((b + 0.5) / bins, float(conf[index == b].mean()), float(hit[index == b].mean()), int((index == b).sum()))
            for b in range(bins) if (index == b).any()]


def fit_logistic(features: Sequence[Sequence[float]] | Sequence[float], right: Sequence[bool], l2: float = 1e-3
                 ) -> tuple[float, ...]:
    """Weights (one per feature, then the intercept) of ``sigmoid(features @ weights + intercept)``
    fitted to right/wrong by maximum likelihood (Newton's method; a little L2 on the feature weights
    keeps a separable set finite). With one feature, the logit of a probability: Platt scaling."""
    hit = np.asarray(right, dtype=np.float64)
    values = np.asarray(features, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if values.shape[0] != len(hit) or not len(hit) or not np.isfinite(values).all():
        raise ValueError("features must be finite, one row per right/wrong label")
    design = np.concatenate([values, np.ones((len(hit), 1))], axis=1)
    weights = np.zeros(design.shape[1])
    penalty = np.diag([l2] * values.shape[1] + [0.0])
    for _ in range(100):
        p = _sigmoid(design @ weights)
        gradient = design.T @ (p - hit) + penalty @ weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return tuple(float(w) for w in weights)


def fit_temperature(scores: Sequence[float], right: Sequence[bool]) -> float:
    """The temperature ``T`` whose ``exp(score / T)`` best predicts right/wrong (least log loss).

    ``score`` is a caption's mean log-probability per word, so ``exp(score)`` is the decoder's own
    sequence probability per word; dividing the log-probability by ``T`` is temperature scaling
    (Guo et al., 2017) of that probability. One parameter, found by golden-section search on log T.
    """
    values, hit = _arrays(scores, right, bounded=False)
    values = np.minimum(values, -1e-6)  # a score of 0 (probability 1) would make every T equal

    def loss(log_t: float) -> float:
        p = np.clip(np.exp(values / math.exp(log_t)), 1e-9, 1 - 1e-9)
        return float(-(hit * np.log(p) + (1 - hit) * np.log(1 - p)).mean())

    low, high = math.log(1e-3), math.log(1e3)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(80):
        if loss(a) < loss(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return math.exp((low + high) / 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _arrays(values: Sequence[float], right: Sequence[bool], bounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(values, dtype=np.float64)
    hit = np.asarray(right, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1 or not len(conf):
        raise ValueError("confidence and right must be equally long, non-empty sequences")
    if not np.isfinite(conf).all() or (bounded and ((conf < 0) | (conf > 1)).any()):
        raise ValueError("confidence values must be finite" + (" and within [0, 1]" if bounded else ""))
    return conf, hit
