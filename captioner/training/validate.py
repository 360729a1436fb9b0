"""Measuring a model on the validation images: the loss, greedy captions scored by a metric, baselines.

The same measurements judge every epoch, the starting model before training (zero-shot) and
the best constant caption (the one training caption that scores best when it is given for every
validation image), so the three can be compared.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn

from captioner.core.captions import caption_features
from captioner.core.model.network import ShowAndTell, packed_targets
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.options import DecodeOptions
from captioner.training.inputs import FeatureInputs, Inputs, Pairs, embeddings_of

GREEDY = DecodeOptions(beam_size=1, top_classes=0)
MIN_VALID_CAPTIONS = 0.9  # an epoch can be kept only if this share of its validation captions ends properly
CONSTANT_CANDIDATES = 200  # the most frequent training captions tried as the constant caption


def caption_loss(decoder: Callable[..., torch.Tensor], embeddings: torch.Tensor, captions: torch.Tensor,
                 lengths: torch.Tensor, *, dropout: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy per word of teacher-forced captions (``decoder`` is a ``Decoder`` or its compiled form)."""
    captions = captions.to(embeddings.device)
    length_list = lengths.tolist()
    logits = decoder(embeddings, captions, length_list, dropout=dropout)
    return nn.functional.cross_entropy(logits.float(), packed_targets(captions, length_list),
                                       label_smoothing=label_smoothing)


@torch.no_grad()
def validation_loss(model: ShowAndTell, inputs: Inputs, pairs: Pairs, batch_size: int) -> float:
    """Cross-entropy per word of the validation captions (no dropout, no smoothing)."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        rows, captions, lengths = pairs.select(torch.arange(start, min(start + batch_size, len(pairs))))
        inputs_batch, kept_rows = inputs.batch(torch.unique(rows))
        if inputs_batch is None:
            continue
        keep = torch.isin(rows, kept_rows)
        rows, captions, lengths = rows[keep], captions[keep], lengths[keep]
        position = torch.searchsorted(kept_rows, rows).to(inputs_batch.device)
        embeddings = embeddings_of(model, inputs, inputs_batch)[position]
        count = int(lengths.sum())
        total += caption_loss(model.decoder, embeddings, captions, lengths).item() * count
        tokens += count
    return total / tokens if tokens else math.nan


@torch.no_grad()
def validation_scores(model: ShowAndTell, vocab: Vocabulary, inputs: Inputs, captions: Sequence[Sequence[str]],
                      limit: int, batch_size: int) -> tuple[dict[str, float | None], float | None]:
    """(scores of greedy captions of the first ``limit`` images, share of those captions that end with <end>)."""
    from captioner.training.evaluation import score_captions

    model.eval()
    count = min(limit, len(inputs))
    predictions, references, ended = {}, {}, 0
    longest = model.config.max_length - 1  # <start> and max_length - 1 words: no <end> was reached
    for start in range(0, count, batch_size):
        rows = torch.arange(start, min(start + batch_size, count))
        inputs_batch, kept_rows = inputs.batch(rows)
        if inputs_batch is None:
            continue
        results = caption_features(model, vocab, inputs.features_of(model, inputs_batch), GREEDY)
        for row, result in zip(kept_rows.tolist(), results):
            predictions[str(row)] = result.caption
            references[str(row)] = list(captions[row])
            ended += bool(result.caption) and len(result.candidates[0].words) < longest
    if not predictions:
        return {}, None
    return score_captions(references, predictions, use_java=False), ended / len(predictions)


def eligible(score: float | None, valid: float | None) -> bool:
    """Whether an epoch (or the starting model) with this score may be kept."""
    return score is not None and not math.isnan(score) and (valid is None or valid >= MIN_VALID_CAPTIONS)


def best_constant_caption(train_captions: Sequence[Sequence[str]], val_captions: Sequence[Sequence[str]],
                          metric: str, limit: int) -> tuple[str, float]:
    """The training caption that scores best on the first ``limit`` validation images when given for each.

    The ``CONSTANT_CANDIDATES`` most frequent training captions are tried (all of them on small data).
    """
    from captioner.training.evaluation import score_constant_captions

    counts = Counter(" ".join(c.lower().split()) for image in train_captions for c in image)
    candidates = [caption for caption, _ in counts.most_common(CONSTANT_CANDIDATES)]
    references = {str(row): list(refs) for row, refs in enumerate(val_captions[:limit])}
    scores = score_constant_captions(references, candidates, metric)
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return candidates[best], scores[best]


def most_common_caption(captions: Sequence[Sequence[str]]) -> str:
    """The single most frequent training caption."""
    counts = Counter(" ".join(c.lower().split()) for image in captions for c in image)
    return counts.most_common(1)[0][0]


@torch.no_grad()
def precise_batchnorm(model: ShowAndTell, inputs: FeatureInputs, chunk: int = 8192) -> None:
    """Set the projection's BatchNorm statistics to those of the whole training set.

    The tutorial's momentum of 0.01 leaves the running statistics far from the data's for many
    steps; with frozen backbone outputs the exact population statistics cost one pass.
    """
    count, total, total_sq = 0, None, None
    for start in range(0, len(inputs), chunk):
        projected = model.encoder.linear(inputs.features[start:start + chunk].to(inputs.device)).double()
        total = projected.sum(0) if total is None else total + projected.sum(0)
        total_sq = (projected ** 2).sum(0) if total_sq is None else total_sq + (projected ** 2).sum(0)
        count += projected.shape[0]
    mean = total / count
    var = (total_sq / count - mean ** 2).clamp_min(0) * count / max(count - 1, 1)
    model.encoder.bn.running_mean.copy_(mean.float())
    model.encoder.bn.running_var.copy_(var.float())
