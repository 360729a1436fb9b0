"""What the page says about a caption's confidence and about what the model can know.

Words and numbers mean what the JSON's ``confidence`` means: a calibrated probability that the
caption is right (``core.confidence``). A model without a fitted calibration shows no percentage.
"""

from __future__ import annotations

import html

from captioner.core.confidence import NOTHING_RECOGNISED
from captioner.core.results import CaptionResult

LIKELY, UNSURE = 0.7, 0.4  # at or above LIKELY: "likely"; below UNSURE: "unsure"; between: "maybe"
NOT_CALIBRATED = "not calibrated"
CONFIDENCE_NOTE = ("Confidence: how likely the caption is right, as measured on real photos (likely: 70% or more, "
                   "unsure: under 40%). The colours of the words are the decoder's own probabilities: how sure it "
                   "is of its sentence, not of the photo. Add your own photos to `examples/` to see them here.")
CLASSIFIER_KNOWS = ("This model names what an ImageNet classifier sees: 1000 kinds of animals, objects and places. "
                    "It cannot describe actions, counts or colours. For sentences about whole scenes, import the "
                    "COCO tutorial model (<code>python -m captioner import-legacy --download</code>) or fine-tune "
                    "on your own captions (<code>python -m captioner train</code>).")


def confidence_text(confidence: float | None) -> str:
    """"likely 72%", "maybe 55%", "unsure 18%", or "not calibrated"."""
    if confidence is None:
        return NOT_CALIBRATED
    word = "likely" if confidence >= LIKELY else "unsure" if confidence < UNSURE else "maybe"
    return f"{word} {confidence:.0%}"


def caption_details(result: CaptionResult, emits_classes: bool) -> str:
    """The lines under the caption: its confidence in words and numbers, what the decoder itself wrote
    when the caption says less, and (for classifier models) what the model can know."""
    best = result.candidates[0] if result.candidates else None
    if best is None:
        return ""
    if best.calibrated:
        about = "that this caption is right" if best.caption != NOTHING_RECOGNISED else \
            "that the model's best guess would have been right"
        lines = [f'<p class="confidence"><strong>{confidence_text(best.confidence)}</strong> {about}</p>']
    else:
        lines = ['<p class="confidence"><strong>not calibrated</strong>: this model has no measured confidence, '
                 "so none is shown (the decoder's word probabilities below are not one)</p>"]
    if best.decoded:
        lines.append(f'<p class="decoded">The model wrote "{html.escape(best.decoded)}"; unsure of it, the '
                     "caption says less.</p>")
    if emits_classes:
        lines.append(f'<p class="knows">{CLASSIFIER_KNOWS}</p>')
    return "\n".join(lines)
