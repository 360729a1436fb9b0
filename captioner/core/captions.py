"""From backbone outputs to caption results: project, decode, and build one result per image.

Every backend hands its backbone's outputs here (``inference.Captioner``), and so do training's
validation and the bundled-model build.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from captioner.core.model.network import ShowAndTell
from captioner.core.model.search import DecoderSteps, Hypothesis, generate
from captioner.core.model.vocabulary import END_ID, PAD_ID, START_ID, Vocabulary
from captioner.core.options import DecodeOptions
from captioner.core.results import Candidate, CaptionResult


@torch.inference_mode()
def caption_features(model: ShowAndTell, vocab: Vocabulary, features: torch.Tensor, options: DecodeOptions, *,
                     class_names: Sequence[str] | None = None, model_name: str = "",
                     steps: DecoderSteps | None = None) -> list[CaptionResult]:
    """Caption a batch of backbone outputs ``(B, D)``: project, decode, and build one result per row.

    ``options`` are checked here (``ValueError`` names a bad setting). ``class_names`` turn a
    class-probability encoder's outputs into ``top_classes``. ``steps``: the decoder step the search
    runs (default: the model's own torch step).
    """
    options = options.resolved(model.config.max_length)
    features = features.to(next(model.parameters()).device)
    hypotheses = generate(steps or model.steps, model.encoder.project(features), options)
    classes: list[Any] = [None] * len(hypotheses)
    if model.config.emits_classes and class_names is not None and options.top_classes:
        classes = _top_classes(features, model.config.encoder_output, class_names, options.top_classes)
    results = []
    for candidates, top in zip(hypotheses, classes):
        candidates = tuple(_candidate(h, vocab) for h in candidates)
        results.append(CaptionResult(candidates[0].caption if candidates else "", candidates, top, model_name))
    return results


def _candidate(hypothesis: Hypothesis, vocab: Vocabulary) -> Candidate:
    words = []
    for token, log_prob in zip(hypothesis.tokens, hypothesis.token_log_probs):
        if token == END_ID:
            break
        if token not in (PAD_ID, START_ID):
            words.append((vocab.tokens[token], math.exp(log_prob)))
    return Candidate(" ".join(word for word, _ in words), hypothesis.score, tuple(words),
                     cut=END_ID not in hypothesis.tokens)


def _top_classes(outputs: torch.Tensor, encoder_output: str, names: Sequence[str], k: int
                 ) -> list[tuple[tuple[str, float], ...]]:
    probs = outputs.float() if encoder_output == "class_probs" else outputs.float().exp()
    probs, index = probs.topk(min(k, probs.size(1)), dim=1)
    return [tuple((names[i], round(p, 6)) for p, i in zip(ps, ix)) for ps, ix in zip(probs.tolist(), index.tolist())]
