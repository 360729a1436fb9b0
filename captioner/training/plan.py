"""Settings chosen from the data, and the checks made before a training run starts any work.

A data set of a few hundred captions and one of 400,000 need different settings: the
vocabulary threshold, the batch size, the warm-up and the patience are chosen here from the
training captions, and ``TrainingPlan.report`` says what was chosen and why.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.core.errors import CaptionerError
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary, tokenize
from captioner.training.config import FINE_TUNING, FROM_SCRATCH, Regularisation
from captioner.training.schedule import PLATEAU_EPOCHS

TARGET_COVERAGE = 0.97  # an automatic threshold keeps at least this share of the training caption tokens
UNK_WARNING = 0.03  # warn when <unk> would stand for more than this share of the tokens
MAX_AUTO_MIN_COUNT = 5
MAX_AUTO_BATCH = 128  # the tutorial's batch size: the largest chosen automatically
MIN_STEPS_PER_EPOCH = 16
DEFAULT_MAX_EPOCHS = 200
PATIENCE_STEPS = 2000  # patience covers about this many optimizer steps, between 3 and 10 epochs
TRAIN_EXTRA = {"pycocoevalcap": "the validation metric", "matplotlib": "training.png"}


@dataclass
class VocabularyChoice:
    vocab: Vocabulary
    min_count: int
    coverage: float  # share of the training caption tokens that are in the vocabulary
    val_coverage: float | None  # the same for the validation captions
    why: str
    warning: str | None = None

    def report(self) -> str:
        val = f", {self.val_coverage:.1%} of the validation tokens" if self.val_coverage is not None else ""
        line = (f"vocabulary: {len(self.vocab) - len(SPECIAL_TOKENS)} words seen at least {self.min_count} "
                f"time(s) ({self.why}); they cover {self.coverage:.1%} of the training caption tokens{val}")
        return line + (f"\nwarning: {self.warning}" if self.warning else "")


def word_counts(captions: Iterable[str]) -> Counter:
    return Counter(w for caption in captions for w in tokenize(caption) if w not in SPECIAL_TOKENS)


def coverage(counts: Counter, vocab: Vocabulary) -> float:
    """Share of the counted tokens that ``vocab`` knows (1.0 for no tokens)."""
    total = sum(counts.values())
    return sum(n for w, n in counts.items() if w in vocab) / total if total else 1.0


def choose_vocabulary(train_captions: Sequence[str], val_captions: Sequence[str] = (),
                      min_count: int | None = None) -> VocabularyChoice:
    """The vocabulary of the training captions; ``min_count=None`` chooses the threshold.

    The chosen threshold is the largest count up to ``MAX_AUTO_MIN_COUNT`` whose words cover
    ``TARGET_COVERAGE`` of the training caption tokens (1 always does).
    """
    counts = word_counts(train_captions)
    total = sum(counts.values())
    if total == 0:
        raise CaptionerError("the training captions hold no words")

    def share(threshold: int) -> float:
        return sum(n for n in counts.values() if n >= threshold) / total

    if min_count is None:
        min_count = next(t for t in range(MAX_AUTO_MIN_COUNT, 0, -1) if t == 1 or share(t) >= TARGET_COVERAGE)
        why = (f"chosen: the largest count up to {MAX_AUTO_MIN_COUNT} that keeps at least "
               f"{TARGET_COVERAGE:.0%} of the training caption tokens")
    else:
        why = "as asked"
    vocab = Vocabulary.build(train_captions, min_count=min_count)
    covered = coverage(counts, vocab)
    val_counts = word_counts(val_captions)
    val_covered = coverage(val_counts, vocab) if val_counts else None
    warning = None
    if 1 - covered > UNK_WARNING:
        warning = (f"<unk> would stand for {1 - covered:.1%} of the training caption tokens, so the model learns "
                   f"to say <unk> (which captions never show); lower --min-word-count (1 keeps every word)")
    return VocabularyChoice(vocab, min_count, covered, val_covered, why, warning)


def choose_batch_size(pairs: int, requested: int | None = None) -> tuple[int, str]:
    """The batch size and why: at least ``MIN_STEPS_PER_EPOCH`` steps per epoch, at most 128 per batch."""
    if requested is not None:
        return max(2, min(requested, pairs)), "as asked"
    size = 2 ** int(math.log2(max(1, pairs // MIN_STEPS_PER_EPOCH))) if pairs >= MIN_STEPS_PER_EPOCH else 1
    size = max(min(8, pairs), min(MAX_AUTO_BATCH, size))
    return max(2, size), (f"chosen: a power of two up to {MAX_AUTO_BATCH} giving at least "
                          f"{MIN_STEPS_PER_EPOCH} steps per epoch, and no fewer than 8 captions per batch")


def steps_per_epoch(pairs: int, batch_size: int) -> int:
    steps = math.ceil(pairs / batch_size)
    return max(1, steps - 1 if steps > 1 and pairs % batch_size == 1 else steps)  # a lone caption joins a batch


def default_patience(steps: int) -> int:
    """Epochs without a better validation score before stopping: about 2,000 steps, 3 to 10 epochs."""
    return max(3, min(10, math.ceil(PATIENCE_STEPS / steps)))


def default_warmup(steps: int) -> int:
    """Warm-up steps: two epochs, at most 500."""
    return min(500, 2 * steps)


@dataclass
class StepPlan:
    batch_size: int
    batch_why: str
    steps_per_epoch: int
    max_epochs: int
    patience: int | None  # None: a fixed number of epochs
    warmup_steps: int
    lr: float
    lr_schedule: str
    metric: str | None

    def report(self) -> str:
        by = self.metric or "validation loss"
        stop = (f"early stopping after {self.patience} epochs without a better {by}, at most {self.max_epochs} "
                f"epochs ({self.max_epochs * self.steps_per_epoch:,} steps)" if self.patience is not None else
                f"{self.max_epochs} epochs ({self.max_epochs * self.steps_per_epoch:,} steps), no early stopping")
        every = max(1, self.patience // 2) if self.patience else PLATEAU_EPOCHS
        schedule = (f"halved after every {every} epochs without a better score" if self.lr_schedule == "plateau"
                    else "constant")
        return (f"steps: batch size {self.batch_size} ({self.batch_why}), {self.steps_per_epoch} steps per epoch; "
                f"{stop}\nlearning rate: {self.lr:g}, warm-up over {self.warmup_steps} steps, then {schedule}")


def plan_steps(pairs: int, *, batch_size: int | None, epochs: int | None, max_epochs: int | None,
               patience: int | None, warmup_steps: int | None, lr: float, lr_schedule: str,
               metric: str | None) -> StepPlan:
    """``epochs`` set: exactly that many (no early stopping); else early stopping up to ``max_epochs``."""
    size, why = choose_batch_size(pairs, batch_size)
    steps = steps_per_epoch(pairs, size)
    if epochs is not None:
        most, patience = epochs, None
    else:
        most, patience = max_epochs or DEFAULT_MAX_EPOCHS, patience or default_patience(steps)
    warmup = default_warmup(steps) if warmup_steps is None else warmup_steps
    return StepPlan(size, why, steps, most, patience, warmup, lr, lr_schedule, metric)


def regularisation_for(fine_tuning: bool, dropout: float | None = None, weight_decay: float | None = None,
                       label_smoothing: float | None = None,
                       freeze_projection: bool | None = None) -> Regularisation | None:
    """The defaults for the kind of run with the settings given replacing theirs; None when none is given."""
    given = {name: value for name, value in (("dropout", dropout), ("weight_decay", weight_decay),
                                             ("label_smoothing", label_smoothing),
                                             ("freeze_projection", freeze_projection)) if value is not None}
    if not given:
        return None
    return dataclasses.replace(FINE_TUNING if fine_tuning else FROM_SCRATCH, **given)


def describe(regularisation: Regularisation) -> str:
    """``Regularisation`` in words, for the report and the model card."""
    parts = [f"dropout {regularisation.dropout:g}", f"weight decay {regularisation.weight_decay:g}",
             f"label smoothing {regularisation.label_smoothing:g}"]
    if regularisation.freeze_projection:
        parts.append("projection frozen")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- checks before work


def check_dependencies(metric: str | None) -> None:
    """A one-line error naming the ``train`` extra when what training needs is not installed."""
    wanted = {name: use for name, use in TRAIN_EXTRA.items() if metric is not None or name != "pycocoevalcap"}
    missing = [name for name in wanted if not _installed(name)]
    if missing:
        raise CaptionerError(f"training needs the 'train' extra: pip install 'captioner[train]' "
                             f"(missing: {', '.join(f'{name} for {wanted[name]}' for name in missing)})")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules
        return False


def check_output_folder(out_dir: str | os.PathLike, resume: bool) -> None:
    """The output folder can be written and holds no other run's model (unless resuming it)."""
    from captioner.core.repository.storage import MODEL_FILES

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CaptionerError(f"--out {out} is a file, not a folder")
    if not resume and out.is_dir() and (out / "checkpoint.pt").exists():
        raise CaptionerError(f"{out} already holds a training checkpoint; resume it (--resume) "
                             "or choose another output directory")
    if not resume and out.is_dir() and any((out / name).exists() for name in MODEL_FILES):
        raise CaptionerError(f"{out} already holds a model; choose another output directory")
    parent = out if out.is_dir() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaptionerError(f"cannot write the model to {out}: {parent} is not writable")
