"""What captioning an image gives back, and its one JSON form.

The CLI's ``--json``, the web API, the batch downloads and the Ray front ends all write
``CaptionResult.to_dict()`` unchanged: ``image`` (when known), ``caption``, ``candidates``
(``caption``, ``score``, ``confidence``, ``words``, ``cut``), ``words``, ``top_classes``, ``model``; or, for an
image that could not be captioned, ``image``, ``error`` and ``model``. Results are immutable, so a
remembered result can be handed to many callers without copying.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Candidate:
    caption: str
    score: float  # mean log-probability per token (length-normalised); exp(score) is in (0, 1]
    words: tuple[tuple[str, float], ...]  # each word with the probability the decoder gave it
    cut: bool = False  # the caption would have gone on: it was cut at the maximum length

    @property
    def confidence(self) -> float:
        """``exp(score)``: the geometric mean of the tokens' probabilities, in (0, 1]."""
        return math.exp(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "score": self.score, "confidence": self.confidence,
                "words": _words(self.words), "cut": self.cut}


@dataclass(frozen=True)
class CaptionResult:
    caption: str = ""
    candidates: tuple[Candidate, ...] = ()
    top_classes: tuple[tuple[str, float], ...] | None = None  # for ImageNet-classifier encoders: (class, p)
    model: str = ""
    image: str | None = None  # the input's name, when it has one (a file path, a batch entry)
    error: str | None = None  # why this image could not be captioned (then there are no candidates)

    @property
    def words(self) -> tuple[tuple[str, float], ...]:
        return self.candidates[0].words if self.candidates else ()

    @property
    def score(self) -> float | None:
        return self.candidates[0].score if self.candidates else None

    @property
    def confidence(self) -> float | None:
        return self.candidates[0].confidence if self.candidates else None

    def named(self, image: str | None) -> CaptionResult:
        """The same result for the input called ``image``."""
        return replace(self, image=image)

    def to_dict(self) -> dict[str, Any]:
        head = {} if self.image is None else {"image": self.image}
        if self.error is not None:
            return {**head, "error": self.error, "model": self.model}
        return {**head, "caption": self.caption, "candidates": [c.to_dict() for c in self.candidates],
                "words": _words(self.words),
                "top_classes": None if self.top_classes is None else [
                    {"label": label, "probability": p} for label, p in self.top_classes],
                "model": self.model}


def failed(image: str | None, error: str, model: str = "") -> CaptionResult:
    """The result for an input that could not be captioned."""
    return CaptionResult(model=model, image=image, error=error)


def _words(words: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
    return [{"word": word, "probability": probability} for word, probability in words]
