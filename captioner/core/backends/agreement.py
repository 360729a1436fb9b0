"""The int8 encoder's check: do its captions match the fp32 encoder's on real photos it never saw?

Every photo of the check set is captioned greedily and with the default beam search, once from the
fp32 encoder's outputs and once from the int8 encoder's, by the same decoder. The graph passes when
at least ``NEEDED`` of the captions are identical in each decoding, over at least ``MIN_PHOTOS``
photos (fewer cannot show 98%: the graph is then "unchecked"). The result is recorded in the int8
graph's metadata (``to_metadata``), read back when the graph is loaded (``from_metadata``), and
written into the model card (``card_section``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from captioner.core.captions import caption_features
from captioner.core.options import DecodeOptions

NEEDED = 0.98
MIN_PHOTOS = 50
DECODINGS = {"greedy": DecodeOptions(beam_size=1), "beam 3": DecodeOptions()}
CARD_HEADING = "## Int8 encoder (ONNX Runtime)"

Encoder = Callable[[torch.Tensor], torch.Tensor]  # pixels (B, 3, S, S) -> backbone outputs (B, D)


@dataclass(frozen=True)
class Agreement:
    """How many of ``photos`` check photos got identical captions from both encoders, per decoding."""

    photos: int
    greedy: int
    beam: int

    @property
    def verdict(self) -> str:
        """``passed``, ``failed``, or ``unchecked`` (too few photos to tell)."""
        if self.photos < MIN_PHOTOS:
            return "unchecked"
        return "passed" if min(self.greedy, self.beam) >= NEEDED * self.photos else "failed"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def rate(self, identical: int) -> float:
        return identical / self.photos if self.photos else 0.0

    def figures(self) -> str:
        """``"identical captions on 120 held-out photos: greedy 99.2%, beam 3 98.3%"``."""
        return (f"identical captions on {self.photos} held-out photos: greedy {self.rate(self.greedy):.1%}, "
                f"beam 3 {self.rate(self.beam):.1%}")

    def line(self, asked: bool = False) -> str:
        """The one line a user reads about the check; ``asked``: for a user who asked for int8 by name."""
        if self.verdict == "passed":
            return f"int8 encoder passed its check ({self.figures()}; at least {NEEDED:.0%} needed)"
        if self.verdict == "failed":
            outcome = "used as asked (--precision int8)" if asked else "refused: the fp32 encoder is used"
            return f"int8 encoder failed its check ({self.figures()}; at least {NEEDED:.0%} needed): {outcome}"
        outcome = "used as asked (--precision int8)" if asked else "--precision auto uses the fp32 encoder"
        return (f"int8 encoder unchecked ({self.photos} held-out photos; at least {MIN_PHOTOS} are needed for "
                f"the check): {outcome}")

    def to_metadata(self) -> dict[str, str]:
        return {"agreement": self.verdict, "agreement_photos": str(self.photos),
                "agreement_greedy": str(self.greedy), "agreement_beam3": str(self.beam),
                "agreement_needed": f"{NEEDED:g}"}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Agreement | None:
        """The agreement a graph's metadata records (None when it records none, or a malformed one)."""
        try:
            found = cls(int(metadata["agreement_photos"]), int(metadata["agreement_greedy"]),
                        int(metadata["agreement_beam3"]))
        except (KeyError, ValueError):
            return None
        if not 0 <= found.greedy <= found.photos or not 0 <= found.beam <= found.photos:
            return None
        return found if metadata.get("agreement") == found.verdict else None


def measure(model, vocab, reference: Encoder, candidate: Encoder, batches: Sequence[torch.Tensor]) -> Agreement:
    """Caption every batch of check photos from both encoders' outputs with each of ``DECODINGS``."""
    photos, identical = 0, {name: 0 for name in DECODINGS}
    for pixels in batches:
        expected, found = reference(pixels), candidate(pixels)
        photos += len(pixels)
        for name, options in DECODINGS.items():
            mine = caption_features(model, vocab, expected, options)
            theirs = caption_features(model, vocab, found, options)
            identical[name] += sum(a.caption == b.caption for a, b in zip(mine, theirs))
    return Agreement(photos, identical["greedy"], identical["beam 3"])


def card_section(agreement: Agreement, calibration: str) -> str:
    """The model card's section on the int8 encoder (``calibration``: how it was calibrated)."""
    asked = "`--precision int8` uses it as asked"
    used = {"passed": "`--precision auto` (the default) uses it on the onnx backend",
            "failed": f"`--precision auto` refuses it and uses the fp32 encoder; {asked}",
            "unchecked": f"`--precision auto` uses the fp32 encoder; {asked}"}[agreement.verdict]
    greedy, beam = (f"{n} of {agreement.photos} ({agreement.rate(n):.1%})" for n in (agreement.greedy, agreement.beam))
    return (f"{CARD_HEADING}\n\n"
            "`onnx/encoder_model_int8.onnx` is this model's encoder quantised to int8 by ONNX Runtime's static "
            "quantisation (QDQ, per-channel weights; the pooling and the classifier head kept in float), "
            f"calibrated on {calibration}. Its captions were compared with the fp32 encoder's on real photos that "
            "the calibration never saw:\n\n"
            "| decoding | identical captions |\n|---|---|\n"
            f"| greedy | {greedy} |\n| beam search, 3 beams | {beam} |\n\n"
            f"Verdict: {agreement.verdict} (at least {NEEDED:.0%} identical needed in each, on at least {MIN_PHOTOS} "
            f"photos); {used}.\n")


def with_card_section(card: str, section: str) -> str:
    """``card`` (a model card's Markdown) with its int8 section replaced by ``section``, or ``section``
    added at the end."""
    pattern = re.compile(rf"^{re.escape(CARD_HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(card):
        return pattern.sub(lambda _: section + "\n", card, count=1).rstrip("\n") + "\n"
    return card.rstrip("\n") + "\n\n" + section
