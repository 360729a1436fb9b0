"""What a training run measured: one ``EpochStats`` per epoch, and the run's ``TrainingResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    scores: dict[str, float | None]  # greedy captions of validation images; {} without a metric
    seconds: float
    captions_per_s: float  # training pairs per second of the epoch's training part
    best: bool = False
    valid_captions: float | None = None  # share of validation captions that end with <end>; None: not captioned
    lr: float | None = None  # the learning rate at the end of the epoch


@dataclass
class Baselines:
    """What a trained model is compared with, on the same validation images and metric."""

    start: str | None = None  # the starting model (None: from scratch)
    start_hub_id: str | None = None  # owner/name when the starting model came from the Hub
    start_score: float | None = None  # its score before training (zero-shot)
    start_val_loss: float | None = None
    start_saved: bool = False  # the starting model was saved as the model to keep unless an epoch beats it
    constant_caption: str | None = None  # the training caption that scores best when given for every image
    constant_score: float | None = None

    def to_dict(self) -> dict[str, str | float | None]:
        return dict(self.__dict__)


@dataclass
class TrainingResult:
    history: list[EpochStats]
    initial_val_loss: float  # before the first epoch
    best_epoch: int  # 0: no epoch ran, or none beat the starting model (which was kept)
    metric: str | None  # what chose the best epoch; None: the validation loss
    out_dir: Path
    skipped_images: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    stopped_early: bool = False  # the validation score stopped improving before the last epoch allowed
    plan: list[str] = field(default_factory=list)  # what was chosen from the data, and why
    baselines: Baselines = field(default_factory=Baselines)

    @property
    def best(self) -> EpochStats | None:
        return next((e for e in self.history if e.epoch == self.best_epoch), None)

    @property
    def kept_start(self) -> bool:
        """No epoch beat the starting model on validation, so the starting model was kept."""
        return self.best_epoch == 0 and self.baselines.start_saved and bool(self.history)

    def verdict(self) -> str:
        """One line: the kept model against the starting model and the best constant caption."""
        by = self.metric or "validation loss"
        base = self.baselines
        best = self.best
        parts = []
        if self.kept_start:
            last = self.history[-1].epoch
            before = base.start_score if self.metric else base.start_val_loss
            return (f"training did not beat the starting model ({by} {_num(before)} before training; "
                    f"none of {last} epochs did better), so the starting model was kept")
        if best is not None:
            parts.append(f"best epoch {best.epoch}: {by} "
                         f"{_num(best.scores.get(self.metric) if self.metric else best.val_loss)}")
        if base.start is not None:
            before = base.start_score if self.metric else base.start_val_loss
            parts.append(f"starting model (zero-shot) {_num(before)}")
        if base.constant_score is not None:
            parts.append(f"best constant caption ({base.constant_caption!r}) {_num(base.constant_score)}")
        return "; ".join(parts)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
