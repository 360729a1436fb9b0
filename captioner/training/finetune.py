"""Where a training run starts: a trained model to fine-tune (the default), or a new one.

``choose_start`` decides before any data is read. A run fine-tunes the bundled model, or the
model ``init_from`` names (a model folder, an imported tutorial model, ``owner/name[@revision]``
on the Hub), keeping its encoder, encoder output, preprocessing and vocabulary, unless
``from_scratch`` is asked or an architecture setting asks for an encoder the bundled model does
not have. ``Start.report`` says which it is and why.

``add_new_words`` then fits the vocabulary to the training captions: words it lacks are added
(``new_words="add"``) or left as ``<unk>`` and reported. A new word's embedding and output rows
start from a known word it is made of (``hens`` from ``hen``, ``sea-lion`` from ``sea`` and
``lion``), else from the mean of the known words; its output bias is the mean known bias, or just
below that of the word it is made of. Its logit starts at about the average word's (or just below
its related word's), far below the word the model says, so the model starts out saying what the
source said; a few steps on the new word's captions bring it into play.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.core.errors import CaptionerError
from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.core.repository.hub import parse_hub_id
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, load_model
from captioner.training.config import BUNDLED, NEW_WORDS, TrainConfig
from captioner.training.plan import coverage, word_counts

RELATED_BIAS_GAP = 1.0  # a new word starts e times less likely than the known word it is made of
ARCHITECTURE_FIELDS = ("backbone", "encoder_output", "image_size", "embed_size", "hidden_size", "num_layers")


@dataclass
class Start:
    """A trained model to fine-tune (``model`` set), or a new model (``model`` None) and why."""

    why: str
    model: ShowAndTell | None = None  # on the CPU, in training mode
    vocab: Vocabulary | None = None
    source: str | None = None  # for display
    hub_id: str | None = None  # owner/name when it came from the Hub
    added: list[str] = field(default_factory=list)  # words added to the vocabulary, most frequent first
    left_out: list[str] = field(default_factory=list)  # words of the data the vocabulary lacks (report)
    coverage: float | None = None  # share of the training caption tokens the final vocabulary knows

    @property
    def fine_tuning(self) -> bool:
        return self.model is not None

    def report(self) -> str:
        return self.why

    def words_report(self) -> str:
        assert self.vocab is not None and self.coverage is not None
        line = (f"vocabulary: {len(self.vocab) - len(SPECIAL_TOKENS)} words of {self.source}, covering "
                f"{self.coverage:.1%} of the training caption tokens")
        if self.added:
            line += f"; added {len(self.added)} new words (e.g. {', '.join(self.added[:5])})"
        if self.left_out:
            line += (f"; {len(self.left_out)} words of the data are not in its vocabulary and read as <unk> "
                     f"(e.g. {', '.join(self.left_out[:5])}); --new-words add would add them")
        return line


def choose_start(config: TrainConfig) -> Start:
    """Fine-tune ``config.init_from`` (default: the bundled model) when it fits the asked encoder."""
    if config.new_words not in NEW_WORDS:
        raise CaptionerError(f"new_words must be one of {', '.join(NEW_WORDS)}, got {config.new_words!r}")
    if config.from_scratch:
        if config.init_from is not None:
            raise CaptionerError("--from-scratch and --init-from contradict each other: choose one")
        return Start("training from scratch (as asked): a new decoder and projection on the ImageNet backbone")
    asked = {name: getattr(config, name) for name in ARCHITECTURE_FIELDS if getattr(config, name) is not None}
    if config.init_from is None and not (BUNDLED_MODEL_DIR / "config.json").is_file():
        return Start("training from scratch: the bundled model is not installed, so there is nothing to fine-tune")
    source = None if config.init_from in (None, BUNDLED) else config.init_from
    if config.init_from is None and asked:
        bundled = ModelConfig.load(BUNDLED_MODEL_DIR / "config.json")
        differs = _differences(bundled, asked)
        if differs:
            return Start(f"training from scratch: the bundled model's encoder does not fit what was asked "
                         f"({differs}); leave those settings out to fine-tune it")
    loaded = load_model(source, "cpu")
    differs = _differences(loaded.config, asked)
    if differs:
        raise CaptionerError(f"--init-from {config.init_from} does not fit what was asked ({differs}): leave those "
                             "settings out to fine-tune it, or train a new model with --from-scratch")
    model = loaded.model
    if config.max_length is not None:
        model.config = dataclasses.replace(model.config, max_length=config.max_length)
    hub = parse_hub_id(str(source)) if source is not None and not Path(str(source)).expanduser().is_dir() else None
    name = "the bundled model" if source is None else loaded.source
    why = (f"fine-tuning {name} ({loaded.config.backbone}, {loaded.config.encoder_output.replace('_', ' ')}, "
           f"{len(loaded.vocab) - len(SPECIAL_TOKENS)} words): "
           + ("a trained model fits this encoder, so training starts from it (--from-scratch starts anew)"
              if config.init_from is None else "as asked with --init-from"))
    return Start(why, model.train(), loaded.vocab, name, hub[0] if hub else None)


def _differences(config: ModelConfig, asked: dict[str, object]) -> str:
    return ", ".join(f"{name.replace('_', '-')} {getattr(config, name)}, not {value}" for name, value in asked.items()
                     if getattr(config, name) != value)


def add_new_words(start: Start, train_captions: Sequence[str], *, min_count: int = 1, new_words: str = "add") -> None:
    """Fit ``start``'s vocabulary to the captions: words seen ``min_count`` times are new words."""
    assert start.model is not None and start.vocab is not None
    counts = word_counts(train_captions)
    new = sorted((w for w, n in counts.items() if n >= min_count and w not in start.vocab),
                 key=lambda w: (-counts[w], w))
    if new_words == "add" and new:
        old = start.vocab
        start.vocab = Vocabulary([*old.tokens, *new])
        start.model = extend_vocabulary(start.model, old, new).train()
        start.added = new
    elif new:
        start.left_out = new
    start.coverage = coverage(counts, start.vocab)


def related_words(word: str, vocab: Vocabulary) -> list[str]:
    """Known words ``word`` is made of: its singular (``hens`` -> ``hen``) or its hyphenated parts."""
    for singular in (word[:-3] + "y" if word.endswith("ies") else None, word[:-2] if word.endswith("es") else None,
                     word[:-1] if word.endswith("s") else None):
        if singular and singular in vocab:
            return [singular]
    parts = [part for part in word.replace("_", "-").split("-") if part]
    return parts if len(parts) > 1 and all(part in vocab for part in parts) else []


@torch.no_grad()
def extend_vocabulary(model: ShowAndTell, vocab: Vocabulary, new: Sequence[str]) -> ShowAndTell:
    """A copy of ``model`` that knows ``new`` words too: the known rows unchanged, the new ones initialised."""
    old = model.config.vocab_size
    config: ModelConfig = dataclasses.replace(model.config, vocab_size=old + len(new))
    grown = ShowAndTell(config)
    state = model.state_dict()
    words = slice(len(SPECIAL_TOKENS), old)
    bias = state["decoder.linear.bias"]
    rows = {name: [] for name in ("decoder.embed.weight", "decoder.linear.weight", "decoder.linear.bias")}
    for word in new:
        related = [vocab.index[w] for w in related_words(word, vocab)]
        for name, added in rows.items():
            known = state[name][related] if related else state[name][words]
            added.append(known.mean(0))
        if related:  # below the word it is made of, so that word keeps winning until training says otherwise
            rows["decoder.linear.bias"][-1] = bias[related].min() - RELATED_BIAS_GAP
    for name, added in rows.items():
        state[name] = torch.cat([state[name], torch.stack(added)])
    grown.load_state_dict(state)
    grown.encoder.train_backbone = model.encoder.train_backbone
    return grown
