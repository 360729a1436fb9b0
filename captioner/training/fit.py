"""The training loop: teacher forcing on (image, caption) pairs, one validation pass per epoch, the best kept.

``fit_decoder`` trains the decoder and the encoder's projection (the backbone too when
``model.encoder.train_backbone``) from precomputed backbone outputs or from images. It reads top
to bottom: set-up, resume, the starting point measured (validation loss, the starting model's
score when it is a trained model, the best constant caption), then per epoch a pass over shuffled
batches (AdamW, warm-up and plateau schedule, mixed precision on CUDA, gradient clipping,
dropout and label smoothing), the validation loss and a metric on greedy captions, the best
epoch saved as a model folder and ``checkpoint.pt`` written for ``resume``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.devices import select_device
from captioner.core.errors import CaptionerError
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.repository.storage import save_model
from captioner.training.card import model_card, write_final_card
from captioner.training.checkpoint import (CHECKPOINT, check_same_model, load_model_state, read_checkpoint,
                                           write_checkpoint)
from captioner.training.config import CHEAP_METRICS, NO_REGULARISATION, PRECISIONS, TrainConfig
from captioner.training.inputs import (FeatureInputs, Inputs, Pairs, batch_loader, embeddings_of, epoch_batches,
                                       to_device)
from captioner.training.results import Baselines, EpochStats, TrainingResult
from captioner.training.schedule import Schedule
from captioner.training.validate import (best_constant_caption, caption_loss, eligible, precise_batchnorm,
                                         validation_loss, validation_scores)

DEFAULT_BATCH_SIZE = 128


@dataclass
class RunNotes:
    """What the train job tells the loop beyond the settings: facts for the card, and where it started."""

    settings: dict[str, Any] = field(default_factory=dict)  # shown in the model card
    plan: list[str] = field(default_factory=list)  # what was chosen and why
    start: str | None = None  # the trained model ``model`` starts as (None: a new model)
    start_hub_id: str | None = None


def fit_decoder(model: ShowAndTell, vocab: Vocabulary, train_inputs: torch.Tensor | Inputs,
                train_captions: Sequence[Sequence[str]], val_inputs: torch.Tensor | Inputs,
                val_captions: Sequence[Sequence[str]], out_dir: str | os.PathLike,
                config: TrainConfig = TrainConfig(), *, notes: RunNotes | None = None,
                on_epoch: Callable[[EpochStats], None] | None = None) -> TrainingResult:
    """Train ``model`` on ``train_inputs`` (an ``N x D`` matrix of backbone outputs or ``ImageInputs``).

    ``train_captions[i]`` are the captions of row ``i``. From ``config``: ``epochs`` is the most
    epochs in all (``patience`` stops earlier, after that many epochs without a better score);
    ``metric`` (None: the validation loss) is computed each epoch on greedy captions of the first
    ``metric_images`` validation images and picks the best epoch among those whose captions end
    properly. When ``notes.start`` names the trained model ``model`` starts as, that model is
    scored first (zero-shot) and, with ``keep_better_start``, kept unless an epoch beats it.
    The kept model goes to ``out_dir`` with ``README.md`` and ``training.png``; ``checkpoint.pt``
    holds the last epoch for ``resume``. ``model`` ends with the last epoch's weights. The saved
    model includes ``model``'s backbone: it must be the one that produced the features.
    """
    from captioner.training.plan import check_dependencies

    notes = notes or RunNotes()
    device = select_device(config.device)
    out_dir = Path(out_dir)
    metric, regularisation = config.metric, config.regularisation or NO_REGULARISATION
    if len(train_captions) != len(train_inputs) or len(val_captions) != len(val_inputs):
        raise ValueError("each input row needs its list of captions")
    if len(val_inputs) == 0:
        raise CaptionerError("there are no validation images")
    if metric is not None and metric not in CHEAP_METRICS:
        raise CaptionerError(f"unknown validation metric {metric!r}; choose one of {', '.join(CHEAP_METRICS)}")
    check_dependencies(metric)
    amp_dtype = autocast_dtype(device, config.precision)
    epochs = config.epochs or 10
    schedule = Schedule(config.warmup_steps or 0, config.lr_schedule, config.patience)
    model.to(device)
    train = train_inputs if not isinstance(train_inputs, torch.Tensor) else FeatureInputs(train_inputs, device)
    val = val_inputs if not isinstance(val_inputs, torch.Tensor) else FeatureInputs(val_inputs, device)
    train_pairs, val_pairs = Pairs.build(train_captions, vocab), Pairs.build(val_captions, vocab)
    if len(train_pairs) < 2:
        raise CaptionerError("training needs at least 2 captions")
    batch_size = max(2, min(config.batch_size or DEFAULT_BATCH_SIZE, len(train_pairs)))  # BatchNorm: 2 rows

    trained = [p for n, p in model.named_parameters() if not n.startswith("encoder.backbone.")
               and not (regularisation.freeze_projection and n.startswith("encoder."))]
    parameters = [{"params": trained, "lr": config.lr}]
    if model.encoder.train_backbone:
        parameters.append({"params": list(model.encoder.backbone.parameters()),
                           "lr": config.backbone_lr or config.lr / 10})
    base_lrs = [group["lr"] for group in parameters]
    optimizer = torch.optim.AdamW(parameters, weight_decay=regularisation.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    shuffle = torch.Generator().manual_seed(config.seed)
    history: list[EpochStats] = []
    best_epoch, best_score, initial_val_loss, first = 0, -math.inf, math.nan, 1
    baselines = Baselines(notes.start, notes.start_hub_id)
    checkpoint_path = out_dir / CHECKPOINT
    if config.resume:
        state = read_checkpoint(out_dir)
        check_same_model(state, model, vocab)
        if state["metric"] != metric:
            raise CaptionerError(f"the checkpoint chose its best epoch by {state['metric'] or 'validation loss'}; "
                                 f"resume with the same metric")
        load_model_state(model, state)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        history = [EpochStats(**entry) for entry in state["history"]]
        best_epoch, best_score = state["best_epoch"], state["best_score"]
        initial_val_loss, first = state["initial_val_loss"], state["epoch"] + 1
        baselines = Baselines(**state.get("baselines", {}))
        saved = Schedule.from_state(state["schedule"])  # the counters carry on; the settings asked for now win
        schedule.step, schedule.scale, schedule.stale, schedule.stopped = (saved.step, saved.scale, saved.stale,
                                                                           saved.stopped)
    elif checkpoint_path.exists():
        raise CaptionerError(f"{out_dir} already holds a training checkpoint; resume it (--resume) "
                             "or choose another output directory")
    else:
        torch.manual_seed(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = TrainStep(model, optimizer, scaler, schedule, base_lrs, config.clip, amp_dtype, config.compile,
                     regularisation.dropout, regularisation.label_smoothing)

    def result_so_far(stopped_early: bool = False) -> TrainingResult:
        return TrainingResult(history, initial_val_loss, best_epoch, metric, out_dir, plan=list(notes.plan),
                              stopped_early=stopped_early, baselines=baselines)

    def save_kept() -> None:
        save_model(model, vocab, out_dir, card=model_card(model.config, vocab, result_so_far(), config.card,
                                                          notes.settings))

    if not config.resume:  # the starting point: what every epoch is compared with
        if isinstance(train, FeatureInputs) and notes.start is None:
            precise_batchnorm(model, train)  # a trained model keeps its own projection statistics
        initial_val_loss = validation_loss(model, val, val_pairs, batch_size)
        if metric:
            baselines.constant_caption, baselines.constant_score = best_constant_caption(
                train_captions, val_captions, metric, config.metric_images)
        if notes.start is not None:
            baselines.start_val_loss = initial_val_loss
            scores, valid = (validation_scores(model, vocab, val, val_captions, config.metric_images, batch_size)
                             if metric else ({}, None))
            start_score = scores.get(metric) if metric else -initial_val_loss
            baselines.start_score = scores.get(metric) if metric else None
            if config.keep_better_start and eligible(start_score, valid):
                best_score, baselines.start_saved = start_score, True
                save_kept()

    for epoch in range(first, epochs + 1):
        if schedule.stopped:
            break
        began = time.perf_counter()
        train_loss, seen = train_epoch(model, train, train_pairs, step, shuffle, batch_size, device, config.workers,
                                       f"epoch {epoch}/{epochs}", config.progress)
        train_seconds = time.perf_counter() - began
        if isinstance(train, FeatureInputs) and not regularisation.freeze_projection:
            precise_batchnorm(model, train)
        val_loss = validation_loss(model, val, val_pairs, batch_size)
        scores, valid = (validation_scores(model, vocab, val, val_captions, config.metric_images, batch_size)
                         if metric else ({}, None))
        score = scores.get(metric) if metric else -val_loss
        stats = EpochStats(epoch, train_loss, val_loss, scores, time.perf_counter() - began,
                           seen / train_seconds if train_seconds > 0 else 0.0, valid_captions=valid,
                           lr=base_lrs[0] * schedule.factor())
        if eligible(score, valid) and score > best_score:
            best_epoch, best_score, stats.best = epoch, score, True
        schedule.epoch_done(stats.best)
        history.append(stats)
        if stats.best:
            save_kept()
        write_checkpoint(checkpoint_path, model, vocab, optimizer, shuffle, result_so_far(), best_score, epoch,
                         schedule, scaler)
        if config.progress:
            say(epoch_line(stats, epochs, metric))
        if on_epoch is not None:
            on_epoch(stats)
    result = result_so_far(stopped_early=schedule.stopped and bool(history) and history[-1].epoch < epochs)
    if best_epoch or result.kept_start:  # the kept model's card, now with the whole history and its plot
        write_final_card(out_dir, model.config, vocab, result, config.card, notes.settings)
    result.skipped_images = sorted({**train.failures, **val.failures}.items())
    return result


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where supported, else fp16 (with a gradient scaler); none on CPU."""
    if precision not in PRECISIONS:
        raise CaptionerError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise CaptionerError(f"mixed precision ({precision}) needs a CUDA device; this run uses {device}")
    return torch.bfloat16 if precision == "bf16" else torch.float16


class TrainStep:
    """One optimizer step: learning rate from the schedule, autocast, scaled backward, clipping."""

    def __init__(self, model: ShowAndTell, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 schedule: Schedule, base_lrs: list[float], clip: float, amp_dtype: torch.dtype | None,
                 compile: bool, dropout: float, label_smoothing: float):
        self.model, self.optimizer, self.scaler, self.schedule = model, optimizer, scaler, schedule
        self.base_lrs, self.clip, self.amp_dtype = base_lrs, clip, amp_dtype
        self.dropout, self.label_smoothing = dropout, label_smoothing
        self.decoder = torch.compile(model.decoder, dynamic=True) if compile else model.decoder

    def __call__(self, inputs: Inputs, batch: torch.Tensor, kept: torch.Tensor, rows: torch.Tensor,
                 captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.schedule.factor()
        with torch.autocast(batch.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            position = torch.searchsorted(kept, rows).to(batch.device)
            embeddings = embeddings_of(self.model, inputs, batch)[position]
            loss = caption_loss(self.decoder, embeddings, captions, lengths, dropout=self.dropout,
                                label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.stepped()
        return loss.detach()


def train_epoch(model: ShowAndTell, inputs: Inputs, pairs: Pairs, step: TrainStep, shuffle: torch.Generator,
                batch_size: int, device: torch.device, workers: int | None, desc: str,
                progress: bool) -> tuple[float, int]:
    """One pass over the shuffled pairs: (mean loss per word, pairs trained on)."""
    from tqdm import tqdm

    model.train()
    if model.encoder.train_backbone:  # keep the backbone's BatchNorm statistics as pretrained
        for module in model.encoder.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    else:
        model.encoder.backbone.eval()
    batches = epoch_batches(pairs, shuffle, batch_size)
    total, tokens_seen, pairs_seen = 0.0, 0, 0
    losses: list[tuple[torch.Tensor, int]] = []  # summed at the end: no GPU sync per step
    bar = tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False)
    for item in batch_loader(inputs, pairs, batches, device, workers):
        bar.update(1)
        inputs.failures.update(item["failed"])
        rows, kept = item["rows"], item["kept"]
        if item["inputs"] is None or len(kept) < 2 or len(rows) < 2:  # BatchNorm needs two images
            continue
        batch = to_device(item["inputs"], device)
        lengths = item["lengths"]
        loss = step(inputs, batch, kept, rows, to_device(item["captions"], device), lengths)
        count = int(lengths.sum())
        losses.append((loss, count))
        tokens_seen += count
        pairs_seen += len(rows)
    bar.close()
    if losses:
        values = torch.stack([loss for loss, _ in losses]).float().cpu().tolist()
        total = sum(value * count for value, (_, count) in zip(values, losses))
    return total / max(tokens_seen, 1), pairs_seen


def epoch_line(stats: EpochStats, epochs: int, metric: str | None) -> str:
    parts = [f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, val loss {stats.val_loss:.4f}"]
    if metric:
        value = stats.scores.get(metric)
        parts.append(f"{metric} {value:.4f}" if value is not None else f"{metric} n/a")
    parts.append(f"{stats.seconds:.1f} s, {stats.captions_per_s:.0f} captions/s")
    if stats.best:
        parts[-1] += " (best, saved)"
    return ", ".join(parts)


def say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
