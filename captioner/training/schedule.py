"""How long to train and at what learning rate: linear warm-up, halving on plateaus, early stopping.

``Schedule`` is plain state (saved in the training checkpoint), so an interrupted run resumes
with the same learning rate and the same patience left as the run that never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LR_SCHEDULES = ("plateau", "constant")
PLATEAU_EPOCHS = 5  # without early stopping, "plateau" halves the rate after this many epochs without progress


@dataclass
class Schedule:
    """The learning-rate factor per optimizer step and the early-stopping decision per epoch.

    ``warmup_steps``: the factor rises linearly from ``1 / warmup_steps`` to 1 over the first steps.
    ``lr_schedule``: ``"plateau"`` halves the factor after every ``max(1, patience // 2)`` epochs
    (without a patience: ``PLATEAU_EPOCHS``) without a better validation score; ``"constant"``
    keeps it. ``patience``: stop after that many epochs without a better score (None: run every
    epoch asked for).
    """

    warmup_steps: int = 0
    lr_schedule: str = "constant"
    patience: int | None = None
    step: int = 0  # optimizer steps taken
    scale: float = 1.0  # product of the plateau halvings
    stale: int = 0  # epochs since the best one
    stopped: bool = False

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")

    def factor(self) -> float:
        """What the base learning rates are multiplied by for the next optimizer step."""
        warm = min(1.0, (self.step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.scale

    def stepped(self) -> None:
        self.step += 1

    def epoch_done(self, improved: bool) -> None:
        """Record an epoch's outcome: reset or spend patience, halve the rate on a plateau, maybe stop."""
        self.stale = 0 if improved else self.stale + 1
        every = max(1, self.patience // 2) if self.patience else PLATEAU_EPOCHS
        if self.lr_schedule == "plateau" and self.stale and self.stale % every == 0:
            self.scale *= 0.5
        if self.patience is not None and self.stale >= self.patience:
            self.stopped = True

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Schedule:
        return cls(**state)
