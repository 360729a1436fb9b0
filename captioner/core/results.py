"""What captioning an image gives back, and its one JSON form.

The CLI's ``--json``, the web API, the batch downloads and the Ray front ends all write
``CaptionResult.to_dict()`` unchanged: ``image`` (when known), ``caption``, ``confidence``,
``calibrated``, ``candidates`` (``caption``, ``confidence``, ``calibrated``, ``score``, ``decoded``,
``words``, ``mentions``, ``cut``), ``words``, ``top_classes``, ``model``; or, for an image that could not be
captioned, ``image``, ``error`` and ``model``. Results are immutable, so a remembered result can be
handed to many callers without copying.

``confidence`` is a calibrated probability that the caption is right (``captioner.core.confidence``),
or ``None`` with ``calibrated: false`` for a model that has no fitted calibration. ``score`` and the
word probabilities are the decoder's own numbers for the caption it decoded (``decoded``), which the
caption given may say less than (a general word for an unsure specific one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Candidate:
    caption: str
    score: float  # the decoder's mean log-probability per token of ``decoded`` (length-normalised)
    words: tuple[tuple[str, float], ...]  # each decoded word with the probability the decoder gave it
    confidence: float | None = None  # calibrated probability that ``caption`` is right; None: no calibration
    decoded: str | None = None  # the decoder's own caption when ``caption`` says less (else None: the same)
    mentions: tuple[tuple[str, float], ...] = ()  # each thing named, with the classifier's probability of it
    cut: bool = False  # the caption would have gone on: it was cut at the maximum length

    @property
    def calibrated(self) -> bool:
        return self.confidence is not None

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "confidence": self.confidence, "calibrated": self.calibrated,
                "score": self.score, "decoded": self.decoded or self.caption, "words": _words(self.words),
                "mentions": [{"phrase": phrase, "probability": p} for phrase, p in self.mentions],
                "cut": self.cut}


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

    @property
    def calibrated(self) -> bool:
        return bool(self.candidates) and self.candidates[0].calibrated

    def named(self, image: str | None) -> CaptionResult:
        """The same result for the input called ``image``."""
        return replace(self, image=image)

    def to_dict(self) -> dict[str, Any]:
        head = {} if self.image is None else {"image": self.image}
        if self.error is not None:
            return {**head, "error": self.error, "model": self.model}
        return {**head, "caption": self.caption, "confidence": self.confidence, "calibrated": self.calibrated,
                "candidates": [c.to_dict() for c in self.candidates],
                "words": _words(self.words),
                "top_classes": None if self.top_classes is None else [
                    {"label": label, "probability": p} for label, p in self.top_classes],
                "model": self.model}


def failed(image: str | None, error: str, model: str = "") -> CaptionResult:
    """The result for an input that could not be captioned."""
    return CaptionResult(model=model, image=image, error=error)


def _words(words: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
    return [{"word": word, "probability": probability} for word, probability in words]
