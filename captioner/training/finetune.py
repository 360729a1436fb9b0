"""Starting a training run from a trained model (``train --init-from SRC``).

The source is anything ``load_model`` opens: a model folder (an imported tutorial model is
one), ``owner/name[@revision]`` on the Hub, or None for the bundled model. Its architecture,
preprocessing, backbone weights and vocabulary are kept. Words of the new training captions
that the vocabulary lacks are either added (``new_words="add"``: new embedding rows are the
mean of the known words' rows, new output rows the mean weight with the lowest known bias, so
the model starts out saying what the source said) or left as ``<unk>`` and reported.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.core.repository.storage import load_model
from captioner.training.plan import coverage, word_counts

NEW_WORDS = ("add", "report")


@dataclass
class InitFrom:
    model: ShowAndTell  # on the CPU, the source's weights (with rows for added words)
    vocab: Vocabulary
    source: str
    added: list[str]  # words added to the vocabulary, most frequent first
    left_out: list[str]  # words of the data the vocabulary lacks (``new_words="report"``)
    coverage: float  # share of the training caption tokens the final vocabulary knows

    def report(self) -> str:
        line = (f"initialised from {self.source}: {len(self.vocab) - len(SPECIAL_TOKENS)} words, "
                f"covering {self.coverage:.1%} of the training caption tokens")
        if self.added:
            line += f"; added {len(self.added)} new words (e.g. {', '.join(self.added[:5])})"
        if self.left_out:
            line += (f"; {len(self.left_out)} words of the data are not in its vocabulary and read as <unk> "
                     f"(e.g. {', '.join(self.left_out[:5])}); --new-words add would add them")
        return line


def init_from(source: str | os.PathLike | None, train_captions: Sequence[str], *, min_count: int = 1,
              new_words: str = "add") -> InitFrom:
    """The model and vocabulary to continue training from; words seen ``min_count`` times count as new."""
    if new_words not in NEW_WORDS:
        raise ValueError(f"new_words must be one of {', '.join(NEW_WORDS)}, got {new_words!r}")
    loaded = load_model(source, "cpu")
    counts = word_counts(train_captions)
    new = sorted((w for w, n in counts.items() if n >= min_count and w not in loaded.vocab),
                 key=lambda w: (-counts[w], w))
    model, vocab = loaded.model, loaded.vocab
    if new_words == "add" and new:
        vocab = Vocabulary([*loaded.vocab.tokens, *new])
        model = extend_vocabulary(loaded.model, len(vocab))
    return InitFrom(model.train(), vocab, loaded.source, new if new_words == "add" else [],
                    [] if new_words == "add" else new, coverage(counts, vocab))


@torch.no_grad()
def extend_vocabulary(model: ShowAndTell, size: int) -> ShowAndTell:
    """A copy of ``model`` with ``size`` tokens: the known rows unchanged, the new ones initialised."""
    old = model.config.vocab_size
    config: ModelConfig = dataclasses.replace(model.config, vocab_size=size)
    grown = ShowAndTell(config)
    state = model.state_dict()
    words = slice(len(SPECIAL_TOKENS), old)
    for name in ("decoder.embed.weight", "decoder.linear.weight"):
        tensor = state[name]
        state[name] = torch.cat([tensor, tensor[words].mean(0, keepdim=True).expand(size - old, -1)])
    bias = state["decoder.linear.bias"]
    state["decoder.linear.bias"] = torch.cat([bias, bias[words].min().expand(size - old)])
    grown.load_state_dict(state)
    grown.encoder.train_backbone = model.encoder.train_backbone
    return grown
