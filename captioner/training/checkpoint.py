"""``checkpoint.pt``: everything ``resume`` needs to continue a run as if it had never stopped.

The last epoch's weights (a frozen backbone is stored as the fingerprint of its weights), the
optimizer, the random generators, the schedule and the history. Written through the atomic
writer and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from captioner.core.errors import CaptionerError
from captioner.core.files import write_atomic
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import Vocabulary
from captioner.training.features import weights_fingerprint
from captioner.training.results import TrainingResult
from captioner.training.schedule import Schedule

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def read_checkpoint(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state in ``out_dir/checkpoint.pt`` (loaded with ``weights_only=True``)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise CaptionerError(f"nothing to resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors for damaged files
        raise CaptionerError(f"{path} is not a readable training checkpoint: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CaptionerError(f"{path} is not a training checkpoint of this version")
    return state


def write_checkpoint(path: Path, model: ShowAndTell, vocab: Vocabulary, optimizer: torch.optim.Optimizer,
                     shuffle: torch.Generator, result: TrainingResult, best_score: float, epoch: int,
                     schedule: Schedule, scaler: torch.amp.GradScaler) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()
                  if model.encoder.train_backbone or not k.startswith("encoder.backbone.")},
        "train_backbone": model.encoder.train_backbone,
        "backbone_weights": None if model.encoder.train_backbone else weights_fingerprint(model.encoder.backbone),
        "optimizer": optimizer.state_dict(),
        "config": model.config.to_dict(),
        "vocab": list(vocab.tokens),
        "history": [asdict(e) for e in result.history],
        "initial_val_loss": result.initial_val_loss,
        "best_epoch": result.best_epoch,
        "best_score": best_score,
        "metric": result.metric,
        "baselines": result.baselines.to_dict(),
        "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()},
        "schedule": schedule.state_dict(),
    }
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def check_same_model(state: dict[str, Any], model: ShowAndTell, vocab: Vocabulary) -> None:
    config = {k: v for k, v in model.config.to_dict().items() if k != "extra"}
    stored = {k: v for k, v in state["config"].items() if k != "extra"}
    if stored != config or state["vocab"] != vocab.tokens:
        raise CaptionerError("the checkpoint belongs to a different model (configuration or vocabulary differ); "
                             "resume with the same data and options")


def load_model_state(model: ShowAndTell, state: dict[str, Any]) -> None:
    """The checkpoint's weights into ``model``, after checking that they belong to it."""
    if state["train_backbone"] != model.encoder.train_backbone:
        how = "with" if state["train_backbone"] else "without"
        raise CaptionerError(f"the checkpoint was trained {how} fine-tuning of the backbone; resume the same way")
    if not state["train_backbone"] and state["backbone_weights"] != weights_fingerprint(model.encoder.backbone):
        raise CaptionerError("the backbone's weights differ from those the checkpoint was trained with")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not name.startswith("encoder.backbone.") for name in missing) or (
            missing and state["train_backbone"]):
        raise CaptionerError("the checkpoint's weights do not fit the model")
