"""How to decode a caption, and the one place where decoding settings are checked.

Settings arrive from Python callers, the command line, web forms and JSON bodies. Every front end
builds a ``DecodeOptions`` and the core calls ``resolved`` on it, so a bad value gets the same
message everywhere: it names the setting and the allowed range. Nothing is coerced silently:
booleans, fractions, NaN, infinity and text are refused where a whole number is expected.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import Any

MAX_BEAM_SIZE = 50
MAX_LENGTH_RANGE = (2, 200)
MAX_TOP_CLASSES = 20
MAX_NO_REPEAT_NGRAM = 10
LENGTH_PENALTY_RANGE = (0.0, 5.0)
# What runs the model (``backends.choice`` checks the choice); here, so that the command line's parsers
# name them without importing torch.
BACKENDS = ("auto", "torch", "onnx")
# Saying less when unsure (``confidence.rules``); here so that parsers name them without importing torch.
WHEN_UNSURE = ("generalise", "keep")
WHEN_UNSURE_HELP = ("generalise (default): a general word when unsure of the specific one, and 'nothing the model "
                    "recognises' when nothing is recognised; keep: the decoder's caption as it is")
BACKEND_HELP = "auto: ONNX Runtime on CPU when installed, else torch (default: $CAPTIONER_BACKEND or auto)"
# The encoder's arithmetic on the onnx backend (``backends.choice`` checks the choice).
PRECISIONS = ("auto", "fp32", "int8")
PRECISION_HELP = ("encoder arithmetic on the onnx backend; auto: int8 when the model's int8 encoder passed its "
                  "caption agreement check, else fp32 (default: $CAPTIONER_PRECISION or auto)")


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How to decode (keywords only); ``beam_size=1`` is greedy. ``None`` fields take the model's defaults.

    ``num_candidates``: captions kept per image (at most ``beam_size``; greedy keeps one).
    ``max_length``: words a caption may have (``decode_steps`` turns it into decoder steps); a caption
    that would go on is cut there and says so (``Candidate.cut``).
    ``length_penalty``: beam scores are log-probability sums divided by ``length ** length_penalty``.
    ``top_classes``: ImageNet classes reported for class-probability encoders (0: none).
    ``no_repeat_ngram``: forbid any n-gram of this many words from appearing twice in a caption (0: off).
    The default, 2: on the bundled model it removes every repeated bigram from the beam candidates and
    changes none of their scores (``benchmarks/no_repeat_ngram.py``).
    ``when_unsure``: ``generalise`` says less when the calibrated confidence is low (a general word
    for an unsure specific one, "nothing the model recognises" when nothing is recognised);
    ``keep`` gives the decoder's captions as they are (``captioner.core.confidence``).
    """

    beam_size: int = 3
    num_candidates: int | None = None
    max_length: int | None = None
    length_penalty: float = 1.0
    top_classes: int = 5
    no_repeat_ngram: int = 2
    when_unsure: str = "generalise"

    def resolved(self, default_max_length: int) -> DecodeOptions:
        """These options checked and with every default filled in, so equal requests compare equal.

        Raises ``ValueError`` naming the setting and its allowed range.
        """
        beam = whole_number("beam_size", self.beam_size, 1, MAX_BEAM_SIZE)
        if beam == 1:
            candidates = 1 if self.num_candidates is None else whole_number("num_candidates", self.num_candidates,
                                                                              1, 1, "greedy decoding keeps one caption")
        else:
            candidates = beam if self.num_candidates is None else whole_number(
                "num_candidates", self.num_candidates, 1, beam, f"at most beam_size ({beam})")
        length = default_max_length if self.max_length is None else whole_number("max_length", self.max_length,
                                                                                  *MAX_LENGTH_RANGE)
        return replace(self, beam_size=beam, num_candidates=candidates, max_length=length,
                       length_penalty=real_number("length_penalty", self.length_penalty, *LENGTH_PENALTY_RANGE),
                       top_classes=whole_number("top_classes", self.top_classes, 0, MAX_TOP_CLASSES),
                       no_repeat_ngram=whole_number("no_repeat_ngram", self.no_repeat_ngram, 0, MAX_NO_REPEAT_NGRAM),
                       when_unsure=choice("when_unsure", self.when_unsure, WHEN_UNSURE))


def decode_steps(max_words: int) -> int:
    """Decoder steps for captions of up to ``max_words`` words: ``<start>``, the words, and one more step
    that tells whether the caption ends there (``<end>``) or would go on (it is then cut)."""
    return max_words + 2


def whole_number(name: str, value: Any, low: int, high: int, note: str = "") -> int:
    """``value`` as an int in ``[low, high]``; an integral float (3.0, as web forms send) counts as whole."""
    allowed = f"{name} must be a whole number from {low} to {high}" + (f" ({note})" if note else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{allowed}, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(f"{allowed}, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{allowed}, got {number}")
    return number


def count_setting(name: str, raw: int | str) -> int:
    """``raw`` (a number, or the text of an option or environment variable) as a whole number of at
    least 1."""
    try:
        number = int(raw)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return number


def megabytes_setting(name: str, default_mb: int) -> int:
    """Bytes from the environment variable ``name``: a whole number of megabytes of at least 1, or
    ``default_mb`` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    return (count_setting(name, raw) if raw else default_mb) * 1024 * 1024


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed`` (exactly, as a string)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def real_number(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a finite float in ``[low, high]``."""
    allowed = f"{name} must be a number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{allowed}, got {value!r}")
    if not low <= float(value) <= high:
        raise ValueError(f"{allowed}, got {value!r}")
    return float(value)
