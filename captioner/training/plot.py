"""``training.png``: the losses and the validation metric per epoch, with the kept epoch marked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOT_FILE = "training.png"


def plot_history(history: Sequence[Any], best_epoch: int, metric: str | None, path: str | os.PathLike) -> Path:
    """Draw ``history`` (``EpochStats``) to ``path`` (PNG): losses on the left axis, ``metric`` on the right."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [e.epoch for e in history]
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot(epochs, [e.train_loss for e in history], label="training loss", color="tab:blue")
    axes.plot(epochs, [e.val_loss for e in history], label="validation loss", color="tab:orange")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (cross-entropy per word)")
    handles, labels = axes.get_legend_handles_labels()
    if metric:
        right = axes.twinx()
        points = [(e.epoch, e.scores.get(metric)) for e in history if e.scores.get(metric) is not None]
        if points:
            right.plot(*zip(*points), label=f"validation {metric}", color="tab:green", marker=".")
        right.set_ylabel(f"validation {metric}")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if best_epoch:
        line = axes.axvline(best_epoch, color="tab:red", linestyle="--", label=f"kept: epoch {best_epoch}")
        handles, labels = handles + [line], labels + [line.get_label()]
    axes.legend(handles, labels, loc="upper center", fontsize="small", framealpha=0.8)
    axes.set_title("Training history")
    figure.tight_layout()
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(temp, format="png")
    os.replace(temp, path)
    return path
