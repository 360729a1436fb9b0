"""The ``evaluate`` command's job: caption a data set with one or more decodings and score each.

Each batch of images is encoded once and decoded with every beam size; the captions are
scored with ``evaluation.score_captions`` (BLEU, METEOR with Java, ROUGE-L, CIDEr-D).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from captioner.core.captions import caption_features
from captioner.core.errors import CaptionerError
from captioner.core.options import DecodeOptions


@dataclass
class EvaluationResult:
    decodings: dict[str, dict[str, float | None]]  # decoding name ("greedy", "beam-3") -> scores
    captions: dict[str, dict[str, str]]  # decoding name -> image id -> caption
    references: dict[str, list[str]]
    paths: dict[str, str]  # image id -> file
    skipped: list[tuple[str, str]]  # (path, why)

    def to_json(self) -> dict[str, Any]:
        return {
            "scores": self.decodings,
            "images": [{"image_id": key, "image": self.paths[key], "references": refs,
                        "captions": {name: caps[key] for name, caps in self.captions.items()}}
                       for key, refs in self.references.items()],
            "skipped": [{"image": path, "reason": reason} for path, reason in self.skipped],
        }


def decoding_name(beam_size: int) -> str:
    return "greedy" if beam_size == 1 else f"beam-{beam_size}"


def evaluate_captioner(captioner: Any, items: Sequence[Any], *, beam_sizes: Sequence[int] = (3,),
                       batch_size: int = 16, max_length: int | None = None, use_java: bool = True,
                       progress: bool = True) -> EvaluationResult:
    """Caption every item with each beam size (1 = greedy) and score each decoding.

    ``captioner`` is an ``inference.Captioner``; each batch of images is encoded once and decoded
    with every beam size. Unusable images are skipped and listed.
    """
    from tqdm import tqdm

    from captioner.training.evaluation import score_captions

    if not items:
        raise CaptionerError("there are no images to evaluate")
    names = [decoding_name(k) for k in beam_sizes]
    captions: dict[str, dict[str, str]] = {name: {} for name in names}
    references, paths, skipped = {}, {}, []
    model = captioner.model
    with ThreadPoolExecutor(2) as pool:
        for start in tqdm(range(0, len(items), batch_size), desc="captioning", unit="batch", disable=not progress,
                          file=sys.stderr):
            batch = items[start:start + batch_size]
            pixels, kept, failures = captioner.pipeline.load([i.image_path for i in batch], pool)
            skipped += [(str(batch[index].image_path), why) for index, why in failures]
            if pixels is None:
                continue
            features = captioner.pipeline.features(pixels)  # encoded once, decoded with every beam size
            for name, beam in zip(names, beam_sizes):
                options = DecodeOptions(beam_size=beam, num_candidates=1, max_length=max_length, top_classes=0)
                for index, result in zip(kept, caption_features(model, captioner.vocab, features, options)):
                    captions[name][batch[index].image_id] = result.caption
            for index in kept:
                item = batch[index]
                references[item.image_id] = list(item.captions)
                paths[item.image_id] = str(item.image_path)
    if not references:
        raise CaptionerError("none of the images could be read")
    scores = {name: score_captions(references, captions[name], use_java=use_java) for name in names}
    return EvaluationResult(scores, captions, references, paths, skipped)
