"""The rules that turn a caption into a calibrated probability that it is right, one per kind of model.

- ``ClassMassRule`` (an encoder that is an ImageNet classifier and a model that ships
  ``caption_phrases.json``): each phrase of the caption names classes; their summed probability is
  what the classifier says of that thing. The caption is right when one of the things it names is
  (noisy-or of the phrases' masses), and a logistic map of the logit of that mass (Platt scaling),
  fitted on real photos, makes it a probability. When unsure it says less: a specific phrase whose
  own confidence is below ``specific_below`` is replaced by its general word when the classifier
  gives that more mass, and a caption still below ``nothing_below`` becomes ``NOTHING_RECOGNISED``
  (its confidence stays that of the caption it declined). Each thing named keeps its own
  probability in ``mentions``, so an unlikely extra ("... and a pirate ship") shows as unlikely.
- ``TemperatureRule`` (any model with a fitted temperature): ``exp(score / T)``, the decoder's
  per-word sequence probability scaled by the temperature ``train`` fitted on its validation split.
- ``UNCALIBRATED``: no fit: ``confidence`` is ``None``.

A caption the class-mass rule cannot read (not a sentence of its grammar) goes to the next rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from captioner.core.confidence.phrases import FILE_NAME, Phrase, PhraseTable, Reading
from captioner.core.errors import ModelFormatError
from captioner.core.results import Candidate

NOTHING_RECOGNISED = "nothing the model recognises"


class UncalibratedRule:
    """No fitted map: the decoder's numbers only (``score``, word probabilities)."""

    name = "none"

    def assess(self, candidates: Sequence[Candidate], probabilities: np.ndarray | None, when_unsure: str
               ) -> tuple[Candidate, ...]:
        return tuple(replace(c, confidence=None) for c in candidates)


UNCALIBRATED = UncalibratedRule()


@dataclass(frozen=True)
class TemperatureRule:
    temperature: float
    name: str = "temperature"

    def confidence(self, score: float) -> float:
        return min(1.0, math.exp(score / self.temperature))

    def assess(self, candidates: Sequence[Candidate], probabilities: np.ndarray | None, when_unsure: str
               ) -> tuple[Candidate, ...]:
        return tuple(replace(c, confidence=self.confidence(c.score)) for c in candidates)


@dataclass(frozen=True)
class ClassMassRule:
    table: PhraseTable
    slope: float
    intercept: float
    general: float  # added for a caption that names something by its general word (those are right more often)
    specific_below: float
    nothing_below: float
    fallback: Any = UNCALIBRATED  # the rule for captions the table cannot read
    name: str = "class_mass"

    def calibrated(self, mass: float, general: bool = False) -> float:
        """``sigmoid(slope * logit(mass) + intercept + general)``: Platt scaling of the classifier's
        probability, with its own offset for captions that use a general word."""
        z = self.slope * logit(mass) + self.intercept + (self.general if general else 0.0)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def features(self, caption: str, probabilities: np.ndarray) -> tuple[float, bool] | None:
        """(the mass behind what ``caption`` names, whether it uses a general word); ``None`` for a
        caption the table cannot read."""
        reading = self.table.read(caption)
        if reading is None:
            return None
        named = reading.named
        return _anything([self._mass(p.classes, probabilities) for p in named]), any(p.is_general for p in named)

    def assess(self, candidates: Sequence[Candidate], probabilities: np.ndarray | None, when_unsure: str
               ) -> tuple[Candidate, ...]:
        if probabilities is None or probabilities.shape != (self.table.num_classes,):
            return self.fallback.assess(candidates, probabilities, when_unsure)
        assessed = []
        for candidate in candidates:
            reading = self.table.read(candidate.caption)
            if reading is None:
                assessed.extend(self.fallback.assess([candidate], probabilities, when_unsure))
                continue
            if when_unsure == "generalise":
                reading = self._say_less(reading, probabilities)
            assessed.append(self._judge(candidate, reading, probabilities, when_unsure))
        unique = {c.caption: c for c in reversed(assessed)}  # said-less captions may coincide: keep the first
        return tuple(c for c in assessed if unique.get(c.caption) is c)

    def _mass(self, classes: tuple[int, ...], probabilities: np.ndarray) -> float:
        return float(probabilities[list(classes)].sum())

    def _say_less(self, reading: Reading, probabilities: np.ndarray) -> Reading:
        """Each specific phrase whose own confidence is below ``specific_below`` replaced by its
        general word, when the classifier gives the general word more mass."""
        def better(phrase: Phrase | None) -> Phrase | None:
            if phrase is None or phrase.general is None:
                return phrase
            own = self._mass(phrase.classes, probabilities)
            if self.calibrated(own, phrase.is_general) >= self.specific_below:
                return phrase
            general = self.table.phrase(phrase.general)
            return general if general is not None and self._mass(general.classes, probabilities) > own else phrase

        objects = tuple(dict.fromkeys(better(p) for p in reading.objects))
        return Reading(objects, better(reading.wearer), better(reading.garment), better(reading.scene))

    def _judge(self, candidate: Candidate, reading: Reading, probabilities: np.ndarray, when_unsure: str
               ) -> Candidate:
        masses = [(p.text, self._mass(p.classes, probabilities)) for p in reading.named]
        confidence = self.calibrated(_anything([m for _, m in masses]), any(p.is_general for p in reading.named))
        caption = self.table.write(reading)
        if when_unsure == "generalise" and confidence < self.nothing_below:
            caption, masses = NOTHING_RECOGNISED, []
        decoded = candidate.decoded or candidate.caption
        return replace(candidate, caption=caption, confidence=confidence,
                       decoded=decoded if decoded != caption else None,
                       mentions=tuple((text, round(mass, 6)) for text, mass in masses))


def logit(probability: float) -> float:
    p = min(1.0 - 1e-6, max(1e-6, probability))
    return math.log(p / (1.0 - p))


def _anything(masses: Sequence[float]) -> float:
    return 1.0 - math.prod(1.0 - min(1.0, m) for m in masses) if masses else 0.0


def rule_for(config_extra: dict[str, Any], model_dir: Path | None, emits_classes: bool):
    """The confidence rule a model's ``config.json`` (``extra.confidence``) and files describe."""
    settings = config_extra.get("confidence")
    temperature = settings.get("temperature") if isinstance(settings, dict) else None
    fallback = UNCALIBRATED
    if temperature is not None:
        fallback = TemperatureRule(_number(temperature, "temperature", 1e-3, 1e3))
    if not isinstance(settings, dict) or settings.get("rule") != "class_mass":
        return fallback
    phrases = None if model_dir is None else model_dir / FILE_NAME
    if not emits_classes or phrases is None or not phrases.is_file():
        return fallback  # the next rule: no phrase table (or no classifier) to read captions with
    calibration = settings.get("calibration")
    if not isinstance(calibration, dict):
        raise ModelFormatError("config.json: extra.confidence.calibration must be an object with slope and intercept")
    return ClassMassRule(
        PhraseTable.load(phrases), _number(calibration.get("slope"), "calibration.slope", -100, 100),
        _number(calibration.get("intercept"), "calibration.intercept", -100, 100),
        _number(calibration.get("general", 0.0), "calibration.general", -100, 100),
        _number(settings.get("specific_below", 0.0), "specific_below", 0, 1),
        _number(settings.get("nothing_below", 0.0), "nothing_below", 0, 1), fallback)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ModelFormatError(f"config.json: extra.confidence.{name} must be a number from {low:g} to {high:g}, "
                               f"got {value!r}")
    return float(value)
