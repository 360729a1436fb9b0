"""From backbone outputs to caption results: project, decode, and build one result per image.

Every backend hands its backbone's outputs here (``inference.Captioner``), and so do training's
validation and the bundled-model build.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from captioner.core.confidence import UNCALIBRATED, ConfidenceRule
from captioner.core.model.network import ShowAndTell
from captioner.core.model.search import DecoderSteps, Hypothesis, generate
from captioner.core.model.vocabulary import END_ID, PAD_ID, START_ID, Vocabulary
from captioner.core.options import DecodeOptions
from captioner.core.results import Candidate, CaptionResult


@torch.inference_mode()
def caption_features(model: ShowAndTell, vocab: Vocabulary, features: torch.Tensor, options: DecodeOptions, *,
                     class_names: Sequence[str] | None = None, model_name: str = "",
                     steps: DecoderSteps | None = None, confidence: ConfidenceRule = UNCALIBRATED
                     ) -> list[CaptionResult]:
    """Caption a batch of backbone outputs ``(B, D)``: project, decode, and build one result per row.

    ``options`` are checked here (``ValueError`` names a bad setting). ``class_names`` turn a
    class-probability encoder's outputs into ``top_classes``. ``steps``: the decoder step the search
    runs (default: the model's own torch step). ``confidence``: the model's rule for a calibrated
    confidence (``confidence.rule_for``; default: none), which also says less when unsure.
    """
    options = options.resolved(model.config.max_length)
    features = features.to(next(model.parameters()).device)
    hypotheses = generate(steps or model.steps, model.encoder.project(features), options)
    classes: list[Any] = [None] * len(hypotheses)
    if model.config.emits_classes and class_names is not None and options.top_classes:
        classes = _top_classes(features, model.config.encoder_output, class_names, options.top_classes)
    probabilities = class_probabilities(features, model.config.encoder_output)
    results = []
    for row, (candidates, top) in enumerate(zip(hypotheses, classes)):
        decoded = [_candidate(h, vocab) for h in candidates]
        assessed = confidence.assess(decoded, None if probabilities is None else probabilities[row], options.when_unsure)
        results.append(CaptionResult(assessed[0].caption if assessed else "", assessed, top, model_name))
    return results


def class_probabilities(outputs: torch.Tensor, encoder_output: str) -> np.ndarray | None:
    """A classifier encoder's outputs as probabilities ``(B, classes)`` (float64, on the CPU); None otherwise."""
    if encoder_output == "class_probs":
        return outputs.detach().double().cpu().numpy()
    if encoder_output == "class_log_probs":
        return outputs.detach().double().exp().cpu().numpy()
    return None


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
