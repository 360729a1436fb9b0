"""``training.png``: the losses and the validation metric per epoch, the kept epoch marked, and the
starting model's score (zero-shot) and the best constant caption's as horizontal lines beside them."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from captioner.core.files import write_atomic

PLOT_FILE = "training.png"


def plot_history(result: Any, path: str | os.PathLike) -> None:
    """Draw ``result`` (a ``TrainingResult``) to ``path`` (PNG): losses left, the metric and baselines right."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    history, metric, base = result.history, result.metric, result.baselines
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
        if base.start_score is not None:
            right.axhline(base.start_score, color="tab:purple", linestyle=":",
                          label=f"starting model, zero-shot ({base.start_score:.3f})")
        if base.constant_score is not None:
            right.axhline(base.constant_score, color="tab:gray", linestyle="-.",
                          label=f"best constant caption ({base.constant_score:.3f})")
        right.set_ylabel(f"validation {metric}")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if result.best_epoch:
        line = axes.axvline(result.best_epoch, color="tab:red", linestyle="--", label=f"kept: epoch {result.best_epoch}")
        handles, labels = handles + [line], labels + [line.get_label()]
    axes.legend(handles, labels, loc="upper center", fontsize="small", framealpha=0.8)
    axes.set_title("Training history" + (": the starting model was kept" if result.kept_start else ""))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(Path(path), buffer.getvalue())
