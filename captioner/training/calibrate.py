"""The end of ``train``: fit the temperature of the kept model's confidence on its validation split.

A trained model's ``confidence`` is ``exp(score / T)``, the decoder's per-word sequence probability
scaled by a temperature (Guo et al., 2017; ``core.confidence``). ``T`` is fitted here, by least log
loss, to whether each validation image's caption is right, and stored in ``config.json``
(``extra.confidence``). Right, here: the caption shares a content word (not a function word, plural
folded into singular) with one of the image's reference captions. With fewer than
``MIN_IMAGES`` validation images, or all of them right or all wrong, nothing is fitted and the
model says ``calibrated: false``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from captioner.core.captions import caption_features
from captioner.core.confidence import UNCALIBRATED, TemperatureRule
from captioner.core.confidence.measure import auroc, expected_calibration_error, fit_temperature
from captioner.core.files import write_atomic
from captioner.core.model.config import ModelConfig
from captioner.core.options import DecodeOptions
from captioner.core.pipeline import Pipeline
from captioner.core.repository.storage import LoadedModel
from captioner.training.datasets import CaptionedImage

MIN_IMAGES = 20
BATCH_SIZE = 16
RIGHT_WHEN = "the caption shares a content word with one of the image's reference captions"
_FUNCTION_WORDS = frozenset(
    "a an the of and or with on in at by near to from for into onto over under up down out its it his her their "
    "is are was were be being been this that these those some two three there here while other another each one "
    "very front next top side back wearing holding sitting standing looking".split())


def content_words(caption: str) -> set[str]:
    """Lower-case words of a caption other than function words, plurals folded ("dogs" -> "dog")."""
    words = set()
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in _FUNCTION_WORDS or len(word) < 3:
            continue
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
        words.add(word)
    return words


def is_right(caption: str, references: Sequence[str]) -> bool:
    return bool(content_words(caption) & set().union(*(content_words(r) for r in references)))


def calibrate_confidence(model: LoadedModel, val_items: Sequence[CaptionedImage], val_features: torch.Tensor | None,
                         out_dir: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Fit and record the temperature (``None`` and no confidence setting when it cannot be fitted)."""
    scores, right = _judged_captions(model, val_items, val_features)
    config_path = Path(out_dir) / "config.json"
    config = ModelConfig.load(config_path)
    config.extra.pop("confidence", None)  # a starting model's setting does not describe this decoder
    fitted = None
    if len(scores) < MIN_IMAGES or all(right) or not any(right):
        why = (f"{len(scores)} validation images (at least {MIN_IMAGES} are needed)" if len(scores) < MIN_IMAGES
               else f"all {len(scores)} validation captions were {'right' if all(right) else 'wrong'}")
        say(f"confidence: not calibrated ({why}); the model reports calibrated: false")
    else:
        temperature = fit_temperature(scores, right)
        rule = TemperatureRule(temperature)
        confidence = [rule.confidence(score) for score in scores]
        fitted = {"rule": "temperature", "temperature": round(temperature, 6),
                  "fitted_on": f"the validation split at the end of train ({len(scores)} images)",
                  "right_when": RIGHT_WHEN,
                  "validation": {"ece": round(expected_calibration_error(confidence, right), 4),
                                 "auroc": round(auroc(confidence, right), 4),
                                 "right": round(sum(right) / len(right), 4)}}
        config.extra["confidence"] = fitted
        say(f"confidence: temperature {temperature:.3f} fitted on {len(scores)} validation images "
            f"({sum(right)} captions right by a shared content word); on those same images ECE "
            f"{fitted['validation']['ece']:.3f}, AUROC {fitted['validation']['auroc']:.3f}")
    write_atomic(config_path, (json.dumps(config.to_dict(), indent=2) + "\n").encode("utf-8"))
    return fitted


@torch.inference_mode()
def _judged_captions(model: LoadedModel, items: Sequence[CaptionedImage], features: torch.Tensor | None
                     ) -> tuple[list[float], list[bool]]:
    """The decoder's score of each validation image's caption (beam 3, as users caption) and whether it is right."""
    pipeline = Pipeline(model, torch.device("cpu"))
    options = DecodeOptions(when_unsure="keep")
    scores, right = [], []
    for start in range(0, len(items), BATCH_SIZE):
        batch = items[start : start + BATCH_SIZE]
        if features is not None:
            outputs, kept = features[start : start + BATCH_SIZE].float(), list(range(len(batch)))
        else:
            pixels, kept, _ = pipeline.load([item.image_path for item in batch])
            if pixels is None:
                continue
            outputs = pipeline.features(pixels)
        results = caption_features(model.model, model.vocab, outputs, options, confidence=UNCALIBRATED)
        for index, result in zip(kept, results):
            if result.candidates:
                scores.append(result.candidates[0].score)
                right.append(is_right(result.caption, batch[index].captions))
    return scores, right
