"""Caption scoring: the probability the model gives each word of a caption after the words before it.

Teacher forcing: ``<start> w1 ... wn <end>`` is fed to the decoder, one pass for a batch of images.
``explain`` (``gradcam``) differentiates the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.core.images.decode import ImageSource
from captioner.core.model.network import ShowAndTell, packed_targets
from captioner.core.model.vocabulary import END, END_ID, START_ID, UNK_ID, Vocabulary, tokenize

MAX_CAPTION_WORDS = 198  # the longest sequence the model format allows (max_length 200) less <start> and <end>


@dataclass(frozen=True)
class WordScore:
    """A caption word (or ``<end>``) and the probability the model gives it after the words before it.
    ``known`` is False for a word outside the model's vocabulary, which is scored as ``<unk>``."""
    word: str
    probability: float
    known: bool = True

    def to_dict(self) -> dict:
        return {"word": self.word, "probability": self.probability, "known": self.known}


def encode_caption(vocab: Vocabulary, caption: str) -> tuple[list[str], list[int], list[bool]]:
    """(words, ``<start>`` + ids + ``<end>``, whether each word is in the vocabulary); ``ValueError``
    for a caption without words or longer than the model format allows."""
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be text, got {type(caption).__name__}")
    words = tokenize(caption)
    if not words:
        raise ValueError("the caption has no words to score")
    if len(words) > MAX_CAPTION_WORDS:
        raise ValueError(f"the caption has {len(words)} words; at most {MAX_CAPTION_WORDS} can be scored")
    known = [word in vocab for word in words]
    return words, [START_ID, *(vocab.index.get(word, UNK_ID) for word in words), END_ID], known


def word_log_probs(model: ShowAndTell, embeddings: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Teacher forcing through ``Decoder.forward``: ``(B, len(ids) - 1)`` float64 log-probabilities of every
    token after ``<start>`` (the words, then ``<end>``), one row per image embedding."""
    batch, length = embeddings.size(0), len(ids)
    device = embeddings.device
    captions = torch.tensor(list(ids), device=device).expand(batch, length)
    lengths = [length] * batch
    logits = model.decoder(embeddings, captions, lengths)  # packed, time-major
    rows = packed_targets(torch.arange(batch, device=device).view(-1, 1).expand(batch, length), lengths)
    steps = packed_targets(torch.arange(length, device=device).expand(batch, length), lengths)
    # float64 for the last step: a word the model is sure of keeps a probability distinguishable from 1
    chosen = torch.log_softmax(logits.double(), 1).gather(1, packed_targets(captions, lengths).view(-1, 1)).squeeze(1)
    return chosen.new_zeros(batch, length).index_put((rows, steps), chosen)[:, 1:]


def own_word_log_probs(model: ShowAndTell, embeddings: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """``(B,)`` float64: row ``i``'s log-probability of word ``i`` (``ids[i + 1]``), as
    ``word_log_probs(model, embeddings, ids)[i, i]``, for ``B`` at most the number of words.

    Teacher forcing through ``Decoder.forward`` with row ``i`` cut after the words it needs, and the
    softmax taken at its last step only: about half the decoder's steps, and one softmax row per word
    instead of one per word and step (for a 198-word caption and a 1,197-word vocabulary, 2 MB of
    float64 softmax instead of 0.4 GB, with as much again for its gradient)."""
    batch, length = embeddings.size(0), len(ids)
    device = embeddings.device
    captions = torch.tensor(list(ids), device=device).expand(batch, length)
    lengths = [row + 2 for row in range(batch)]  # the image, <start>, then words 1 to row
    logits = model.decoder(embeddings, captions, lengths)  # packed, time-major
    rows = packed_targets(torch.arange(batch, device=device).view(-1, 1).expand(batch, length), lengths)
    steps = packed_targets(torch.arange(length, device=device).expand(batch, length), lengths)
    last = torch.nonzero(steps == rows + 1).squeeze(1)  # each row's last step, where its own word is predicted
    order = last[torch.argsort(rows[last])]  # by row
    targets = packed_targets(captions, lengths)[order]
    return torch.log_softmax(logits[order].double(), 1).gather(1, targets.view(-1, 1)).squeeze(1)


def score(captioner, images: ImageSource | Sequence[ImageSource], caption: str
          ) -> list[WordScore] | list[list[WordScore]]:
    """Each word of ``caption`` (and ``<end>``) with its probability for one image, or for each image of
    a list (one batched pass). Raises ``ImageError`` for an unusable image, ``ValueError`` for a caption
    without words."""
    words, ids, known = encode_caption(captioner.vocab, caption)
    single = not isinstance(images, (list, tuple))
    pixels = captioner.pipeline.load_all([images] if single else list(images))
    if pixels is None:
        return []
    features = captioner.pipeline.features(pixels)
    model = captioner.model
    with torch.inference_mode():
        embeddings = model.encoder.project(features.to(next(model.parameters()).device))
        probabilities = word_log_probs(model, embeddings, ids).double().exp().tolist()
    scores = [[WordScore(word, p, ok) for word, p, ok in zip([*words, END], row, [*known, True])]
              for row in probabilities]
    return scores[0] if single else scores
