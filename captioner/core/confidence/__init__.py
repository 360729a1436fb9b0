"""Confidence: a calibrated probability that a caption is right, and saying less when unsure.

``rule_for`` picks a model's rule from its ``config.json`` and files (``rules``): the classifier's
mass behind what the caption names for models that ship their caption phrases (``phrases``),
temperature scaling of the decoder's sequence probability for models ``train`` calibrated, none
otherwise. ``measure`` holds the metrics and the fits.
"""

from __future__ import annotations

from typing import Protocol

from captioner.core.confidence.rules import (
    NOTHING_RECOGNISED,
    UNCALIBRATED,
    ClassMassRule,
    TemperatureRule,
    UncalibratedRule,
    rule_for,
)


class ConfidenceRule(Protocol):
    name: str

    def assess(self, candidates, probabilities, when_unsure: str) -> tuple: ...


__all__ = ["NOTHING_RECOGNISED", "UNCALIBRATED", "ClassMassRule", "ConfidenceRule", "TemperatureRule",
           "UncalibratedRule", "rule_for"]
