"""Training a Show-and-Tell model, and scoring a trained one on a captioned data set.

``fit_decoder`` is the core: it trains the decoder and the encoder's projection from
precomputed backbone outputs (an ``N x D`` matrix, several captions per row) or, when the
backbone is fine-tuned, from the images themselves. Teacher forcing over packed sequences,
batches from a ``DataLoader``, Adam with a warm-up and a plateau schedule (``schedule.py``),
mixed precision on CUDA, gradient clipping; after every epoch the validation loss and
(optionally) a caption metric on greedy captions of validation images, with early stopping
when the metric stops improving. The best epoch is saved as a model directory with
``training.png``, and ``checkpoint.pt`` in that directory holds what ``resume`` needs.

``train_captioner`` is the whole job for an image data set: settings chosen from the data
(``plan.py``), vocabulary and model (new, or from a trained one: ``finetune.py``), feature
cache (``features.py``), ``fit_decoder``, model card. ``evaluate_captioner`` captions a data
set with one or more decodings and scores each with ``evaluation.score_captions``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.captions import caption_features
from captioner.core.devices import select_device
from captioner.core.errors import CaptionerError
from captioner.core.images.preprocess import load_pixels, preprocessor_for
from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell, packed_targets
from captioner.core.model.vocabulary import PAD_ID, Vocabulary
from captioner.core.options import DecodeOptions
from captioner.core.repository.modelcard import build_card
from captioner.core.repository.storage import save_model
from captioner.training.features import ExtractedFeatures, extract_features, weights_fingerprint
from captioner.training.schedule import Schedule

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
MAX_CAPTION_TOKENS = 64  # longer captions are cut (keeping <end>): one odd line cannot blow up a batch
DEFAULT_METRIC = "CIDEr"
CHEAP_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")  # per epoch, without Java


# ----------------------------------------------------------------------------- results


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
class TrainingResult:
    history: list[EpochStats]
    initial_val_loss: float  # before the first epoch
    best_epoch: int  # 0 when no epoch ran
    metric: str | None  # what chose the best epoch; None: the validation loss
    out_dir: Path
    skipped_images: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    stopped_early: bool = False  # the validation score stopped improving before the last epoch allowed
    plan: list[str] = field(default_factory=list)  # what was chosen from the data, and why

    @property
    def best(self) -> EpochStats | None:
        return next((e for e in self.history if e.epoch == self.best_epoch), None)


@dataclass
class CardInfo:
    """What the model card says about the data; the rest comes from the training run."""

    data: str = "unspecified data"  # a sentence or two: what the images and captions are
    datasets: tuple[str, ...] = ()  # names for the card's YAML ``datasets`` field
    license: str = "apache-2.0"
    limits: str = ("It describes only what its training captions describe, in their words and with "
                   "their biases; expect confident, wrong captions on images unlike its training data.")


# ----------------------------------------------------------------------------- inputs


class FeatureInputs:
    """Precomputed backbone outputs: a batch is a slice of the matrix.

    On CUDA the matrix lives on the GPU when it fits (batches are then gathered there), else in
    pinned memory, so that batches can be copied with ``non_blocking=True``.
    """

    def __init__(self, features: torch.Tensor, device: torch.device):
        if features.dim() != 2:
            raise ValueError(f"features must be an N x D matrix, got shape {tuple(features.shape)}")
        fits = device.type == "cuda" and features.numel() * 4 < 4 * 2**30
        self.features = features.float().to(device if fits else "cpu")
        if device.type == "cuda" and not fits:
            self.features = self.features.pin_memory()
        self.device = device
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def on_device(self) -> bool:
        return self.features.device.type == self.device.type

    def load(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
        """(backbone outputs of ``rows``, the rows kept, failures), where the matrix lives."""
        return self.features[rows.to(self.features.device)], rows, {}

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone outputs on the device, the rows they belong to)."""
        features, rows, _ = self.load(rows)
        return _to_device(features, self.device), rows

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


class ImageInputs:
    """Image files, run through the whole encoder every step (for fine-tuning the backbone).

    An image that cannot be loaded is dropped from its batch and listed in ``failures``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], config: ModelConfig, device: torch.device,
                 workers: int = 2):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocessor_for(config)
        self.device = device
        self.workers = max(1, workers)
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    on_device = False

    @property
    def pool(self) -> ThreadPoolExecutor:
        """This process's decoding threads (a DataLoader worker makes its own)."""
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(self.workers))
        return self._pool[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def close(self) -> None:
        if self._pool is not None and self._pool[0] == os.getpid():
            self._pool[1].shutdown()
        self._pool = None

    def load(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, str]]:
        paths = [self.paths[i] for i in rows.tolist()]
        pixels, kept, failures = load_pixels(paths, self.preprocess, self.pool)
        failed = {paths[i]: why for i, why in failures}
        if pixels is None:
            return None, rows[:0], failed
        return pixels, rows[torch.tensor(kept, dtype=torch.long)], failed

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        pixels, kept, failed = self.load(rows)
        self.failures.update(failed)
        return (None if pixels is None else _to_device(pixels, self.device)), kept

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return model.encoder.backbone_features(inputs)


Inputs = FeatureInputs | ImageInputs
GREEDY = DecodeOptions(beam_size=1, top_classes=0)
MIN_VALID_CAPTIONS = 0.9  # an epoch can be kept only if this share of its validation captions ends properly


def _embeddings(model: ShowAndTell, inputs: Inputs, batch: torch.Tensor) -> torch.Tensor:
    """The image embeddings the decoder reads: the encoder's projection of the batch's backbone outputs."""
    return model.encoder.project(inputs.features_of(model, batch))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``; asynchronously only from pinned memory (elsewhere it would not overlap)."""
    return tensor.to(device, non_blocking=tensor.device.type == "cpu" and tensor.is_pinned())


@dataclass
class _Pairs:
    """Every (image row, caption) pair as a padded id matrix."""

    rows: torch.Tensor  # (P,) image row of each pair
    tokens: torch.Tensor  # (P, L) ids, <pad> after the end
    lengths: torch.Tensor  # (P,)

    @classmethod
    def build(cls, captions: Sequence[Sequence[str]], vocab: Vocabulary) -> _Pairs:
        rows, encoded = [], []
        for row, image_captions in enumerate(captions):
            for caption in image_captions:
                ids = vocab.encode(caption)
                if len(ids) > MAX_CAPTION_TOKENS:
                    ids = ids[:MAX_CAPTION_TOKENS - 1] + ids[-1:]
                rows.append(row)
                encoded.append(ids)
        if not encoded:
            raise CaptionerError("there are no captions to train on")
        lengths = torch.tensor([len(ids) for ids in encoded])
        tokens = torch.full((len(encoded), int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, ids in enumerate(encoded):
            tokens[i, :len(ids)] = torch.tensor(ids)
        return cls(torch.tensor(rows), tokens, lengths)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[index]
        return self.rows[index], self.tokens[index, :int(lengths.max())], lengths


class _Batches(torch.utils.data.Dataset):
    """A training batch per item: the ``DataLoader``'s sampler hands over the pair indices of one batch.

    Items are built on the CPU (in worker processes when there are workers): the pairs, their
    inputs (backbone outputs or decoded images) and the rows that could be loaded.
    """

    def __init__(self, inputs: Inputs, pairs: _Pairs):
        self.inputs, self.pairs = inputs, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: torch.Tensor) -> dict[str, Any]:
        rows, captions, lengths = self.pairs.select(index)
        unique = torch.unique(rows)
        inputs, kept, failed = self.inputs.load(unique)
        if inputs is not None and len(kept) < len(unique):  # images that failed to load: drop their pairs
            keep = torch.isin(rows, kept)
            rows, captions, lengths = rows[keep], captions[keep], lengths[keep]
        return {"inputs": inputs, "kept": kept, "rows": rows, "captions": captions, "lengths": lengths,
                "failed": failed}


def _identity(item: Any) -> Any:
    return item


def _loader(inputs: Inputs, pairs: _Pairs, batches: list[torch.Tensor], device: torch.device,
            workers: int | None) -> torch.utils.data.DataLoader:
    """Batches in the given order; worker processes decode images, pinned memory feeds a GPU."""
    if workers is None:  # features already in memory gain nothing from worker processes
        workers = 0 if isinstance(inputs, FeatureInputs) else min(4, max(0, (os.cpu_count() or 1) - 1))
    if inputs.on_device:
        workers = 0  # a GPU tensor cannot be indexed from another process
    pin = device.type == "cuda" and not inputs.on_device
    return torch.utils.data.DataLoader(_Batches(inputs, pairs), sampler=batches, batch_size=None,
                                       collate_fn=_identity, num_workers=workers, pin_memory=pin,
                                       persistent_workers=False)


def _precision(device: torch.device, precision: str) -> torch.dtype | None:
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- the core


def fit_decoder(
    model: ShowAndTell,
    vocab: Vocabulary,
    train_inputs: torch.Tensor | Inputs,
    train_captions: Sequence[Sequence[str]],
    val_inputs: torch.Tensor | Inputs,
    val_captions: Sequence[Sequence[str]],
    out_dir: str | os.PathLike,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    backbone_lr: float | None = None,
    clip: float = 5.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    metric: str | None = DEFAULT_METRIC,
    metric_images: int = 500,
    resume: bool = False,
    card: CardInfo | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    patience: int | None = None,
    warmup_steps: int = 0,
    lr_schedule: str = "constant",
    precision: str = "auto",
    compile: bool = False,
    workers: int | None = None,
    keep_batchnorm: bool = False,
    plan: Sequence[str] = (),
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingResult:
    """Train ``model`` (decoder and projection; the backbone too when ``model.encoder.train_backbone``).

    ``train_inputs`` is a float ``N x D`` matrix of backbone outputs (``encoder.backbone_features``)
    or ``ImageInputs``; ``train_captions[i]`` are the captions of row ``i``. ``metric`` (a name
    from ``evaluation.METRICS`` or None) is computed each epoch on greedy captions of the first
    ``metric_images`` validation images and picks the best epoch among those whose captions end
    properly (else the validation loss picks). ``epochs`` is the most epochs in all;
    ``patience`` stops earlier, after that many epochs without a better score (None: never).
    ``warmup_steps`` and ``lr_schedule`` shape the learning rate (``schedule.Schedule``).
    ``precision``: autocast on CUDA (``auto``: bf16, else fp16 with a gradient scaler).
    ``compile``: ``torch.compile`` the decoder's training step. ``keep_batchnorm``: keep the
    model's projection statistics for the first validation loss (a model being fine-tuned).
    The best epoch is saved to ``out_dir`` as a model directory with ``training.png``;
    ``out_dir/checkpoint.pt`` holds the last epoch, and ``resume=True`` continues from it.
    ``settings`` and ``plan`` are extra facts for the model card; ``on_epoch(stats)`` runs after
    each epoch's checkpoint is written. ``model`` ends with the last epoch's weights.
    The saved model includes ``model``'s backbone: it must be the one that produced the features
    (e.g. ``load_pretrained_weights`` applied), or the saved model will not caption as validated.
    """
    from captioner.training.plan import check_dependencies
    from captioner.training.plot import PLOT_FILE, plot_history

    device = select_device(device)
    out_dir = Path(out_dir)
    if len(train_captions) != len(train_inputs) or len(val_captions) != len(val_inputs):
        raise ValueError("each input row needs its list of captions")
    if len(val_inputs) == 0:
        raise CaptionerError("there are no validation images")
    card = card or CardInfo()
    if metric is not None and metric not in CHEAP_METRICS:
        raise CaptionerError(f"unknown validation metric {metric!r}; choose one of {', '.join(CHEAP_METRICS)}")
    check_dependencies(metric)
    amp_dtype = _precision(device, precision)
    schedule = Schedule(warmup_steps, lr_schedule, patience)
    model.to(device)
    train = train_inputs if not isinstance(train_inputs, torch.Tensor) else FeatureInputs(train_inputs, device)
    val = val_inputs if not isinstance(val_inputs, torch.Tensor) else FeatureInputs(val_inputs, device)
    train_pairs, val_pairs = _Pairs.build(train_captions, vocab), _Pairs.build(val_captions, vocab)
    if len(train_pairs) < 2:
        raise CaptionerError("training needs at least 2 captions")
    batch_size = max(2, min(batch_size, len(train_pairs)))  # BatchNorm needs 2 rows per batch

    parameters = [{"params": [p for n, p in model.named_parameters() if not n.startswith("encoder.backbone.")],
                   "lr": lr}]
    if model.encoder.train_backbone:
        parameters.append({"params": list(model.encoder.backbone.parameters()), "lr": backbone_lr or lr / 10})
    base_lrs = [group["lr"] for group in parameters]
    optimizer = torch.optim.Adam(parameters)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    shuffle = torch.Generator().manual_seed(seed)
    history: list[EpochStats] = []
    best_epoch, best_score, initial_val_loss, start = 0, -math.inf, math.nan, 1
    checkpoint_path = out_dir / CHECKPOINT
    if resume:
        state = read_checkpoint(out_dir)
        _check_same_model(state, model, vocab)
        if state["metric"] != metric:
            raise CaptionerError(f"the checkpoint chose its best epoch by {state['metric'] or 'validation loss'}; "
                                 f"resume with the same metric")
        _load_model_state(model, state)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        history = [EpochStats(**entry) for entry in state["history"]]
        best_epoch, best_score = state["best_epoch"], state["best_score"]
        initial_val_loss, start = state["initial_val_loss"], state["epoch"] + 1
        if "schedule" in state:  # the counters carry on; the settings asked for now win
            saved = Schedule.from_state(state["schedule"])
            schedule.step, schedule.scale, schedule.stale, schedule.stopped = (saved.step, saved.scale, saved.stale,
                                                                               saved.stopped)
    elif checkpoint_path.exists():
        raise CaptionerError(f"{out_dir} already holds a training checkpoint; resume it (--resume) "
                             "or choose another output directory")
    else:
        torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    step_fn = _TrainStep(model, optimizer, scaler, schedule, base_lrs, clip, amp_dtype, compile)

    if not resume:
        if isinstance(train, FeatureInputs) and not keep_batchnorm:
            _precise_batchnorm(model, train)
        initial_val_loss = _validation_loss(model, val, val_pairs, batch_size)
    result = TrainingResult(history, initial_val_loss, best_epoch, metric, out_dir, plan=list(plan),
                            stopped_early=schedule.stopped)
    for epoch in range(start, epochs + 1):
        if schedule.stopped:
            break
        began = time.perf_counter()
        train_loss, seen = _train_epoch(model, train, train_pairs, step_fn, shuffle, batch_size, device, workers,
                                        f"epoch {epoch}/{epochs}", progress)
        train_seconds = time.perf_counter() - began
        if isinstance(train, FeatureInputs):
            _precise_batchnorm(model, train)
        val_loss = _validation_loss(model, val, val_pairs, batch_size)
        scores, valid = (_validation_scores(model, vocab, val, val_captions, metric_images, batch_size)
                         if metric else ({}, None))
        score = scores.get(metric) if metric else -val_loss
        stats = EpochStats(epoch, train_loss, val_loss, scores, time.perf_counter() - began,
                           seen / train_seconds if train_seconds > 0 else 0.0, valid_captions=valid,
                           lr=base_lrs[0] * schedule.factor())
        eligible = score is not None and not math.isnan(score) and (valid is None or valid >= MIN_VALID_CAPTIONS)
        if eligible and score > best_score:
            best_epoch, best_score, stats.best = epoch, score, True
        schedule.epoch_done(stats.best)
        history.append(stats)
        result = TrainingResult(history, initial_val_loss, best_epoch, metric, out_dir, plan=list(plan),
                                stopped_early=schedule.stopped and epoch < epochs)
        if stats.best:
            save_model(model, vocab, out_dir, card=model_card(model.config, vocab, result, card, settings))
        _write_checkpoint(checkpoint_path, model, vocab, optimizer, shuffle, result, best_score, epoch,
                          schedule, scaler)
        if progress:
            _say(_epoch_line(stats, epochs, metric))
        if on_epoch is not None:
            on_epoch(stats)
    if best_epoch:  # the card of the best model, now with the whole history and its plot
        plot_history(history, best_epoch, metric, out_dir / PLOT_FILE)
        _write_text(out_dir / "README.md", model_card(model.config, vocab, result, card, settings, plot=PLOT_FILE))
    result.skipped_images = sorted({**train.failures, **val.failures}.items())
    return result


class _TrainStep:
    """One optimizer step: learning rate from the schedule, autocast, scaled backward, clipping."""

    def __init__(self, model: ShowAndTell, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 schedule: Schedule, base_lrs: list[float], clip: float, amp_dtype: torch.dtype | None,
                 compile: bool):
        self.model, self.optimizer, self.scaler, self.schedule = model, optimizer, scaler, schedule
        self.base_lrs, self.clip, self.amp_dtype = base_lrs, clip, amp_dtype
        self.decoder = torch.compile(model.decoder, dynamic=True) if compile else model.decoder

    def __call__(self, inputs: Inputs, batch: torch.Tensor, kept: torch.Tensor, rows: torch.Tensor,
                 captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        device_type = batch.device.type
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.schedule.factor()
        with torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            position = torch.searchsorted(kept, rows).to(batch.device)
            embeddings = _embeddings(self.model, inputs, batch)[position]
            loss = _loss(self.decoder, embeddings, captions, lengths)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.stepped()
        return loss.detach()


def _epoch_batches(pairs: _Pairs, shuffle: torch.Generator, batch_size: int) -> list[torch.Tensor]:
    order = torch.randperm(len(pairs), generator=shuffle)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one row
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches


def _train_epoch(model: ShowAndTell, inputs: Inputs, pairs: _Pairs, step: _TrainStep, shuffle: torch.Generator,
                 batch_size: int, device: torch.device, workers: int | None, desc: str,
                 progress: bool) -> tuple[float, int]:
    from tqdm import tqdm

    model.train()
    if model.encoder.train_backbone:  # keep the backbone's BatchNorm statistics as pretrained
        for module in model.encoder.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    else:
        model.encoder.backbone.eval()
    batches = _epoch_batches(pairs, shuffle, batch_size)
    total, tokens_seen, pairs_seen = 0.0, 0, 0
    losses: list[tuple[torch.Tensor, int]] = []  # summed at the end: no GPU sync per step
    bar = tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False)
    for item in _loader(inputs, pairs, batches, device, workers):
        bar.update(1)
        inputs.failures.update(item["failed"])
        rows, kept = item["rows"], item["kept"]
        if item["inputs"] is None or len(kept) < 2 or len(rows) < 2:  # BatchNorm needs two images
            continue
        batch = _to_device(item["inputs"], device)
        lengths = item["lengths"]
        loss = step(inputs, batch, kept, rows, _to_device(item["captions"], device), lengths)
        count = int(lengths.sum())
        losses.append((loss, count))
        tokens_seen += count
        pairs_seen += len(rows)
    bar.close()
    if losses:
        values = torch.stack([loss for loss, _ in losses]).float().cpu().tolist()
        total = sum(value * count for value, (_, count) in zip(values, losses))
    return total / max(tokens_seen, 1), pairs_seen


def _loss(decoder: Callable[..., torch.Tensor] | ShowAndTell, embeddings: torch.Tensor, captions: torch.Tensor,
          lengths: torch.Tensor) -> torch.Tensor:
    if isinstance(decoder, ShowAndTell):
        decoder = decoder.decoder
    captions = captions.to(embeddings.device)
    length_list = lengths.tolist()
    logits = decoder(embeddings, captions, length_list)
    return nn.functional.cross_entropy(logits.float(), packed_targets(captions, length_list))


@torch.no_grad()
def _precise_batchnorm(model: ShowAndTell, inputs: FeatureInputs, chunk: int = 8192) -> None:
    """Set the projection's BatchNorm statistics to those of the whole training set.

    The tutorial's momentum of 0.01 leaves the running statistics far from the data's for many
    steps; with frozen backbone outputs the exact population statistics cost one pass.
    """
    count, total, total_sq = 0, None, None
    for start in range(0, len(inputs), chunk):
        projected = model.encoder.linear(inputs.features[start:start + chunk].to(inputs.device)).double()
        total = projected.sum(0) if total is None else total + projected.sum(0)
        total_sq = (projected ** 2).sum(0) if total_sq is None else total_sq + (projected ** 2).sum(0)
        count += projected.shape[0]
    mean = total / count
    var = (total_sq / count - mean ** 2).clamp_min(0) * count / max(count - 1, 1)
    model.encoder.bn.running_mean.copy_(mean.float())
    model.encoder.bn.running_var.copy_(var.float())


@torch.no_grad()
def _validation_loss(model: ShowAndTell, inputs: Inputs, pairs: _Pairs, batch_size: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        rows, captions, lengths = pairs.select(torch.arange(start, min(start + batch_size, len(pairs))))
        inputs_batch, kept_rows = inputs.batch(torch.unique(rows))
        if inputs_batch is None:
            continue
        keep = torch.isin(rows, kept_rows)
        rows, captions, lengths = rows[keep], captions[keep], lengths[keep]
        embeddings = _embeddings(model, inputs, inputs_batch)[torch.searchsorted(kept_rows, rows).to(inputs_batch.device)]
        count = int(lengths.sum())
        total += _loss(model, embeddings, captions, lengths).item() * count
        tokens += count
    return total / tokens if tokens else math.nan


@torch.no_grad()
def _validation_scores(model: ShowAndTell, vocab: Vocabulary, inputs: Inputs, captions: Sequence[Sequence[str]],
                       limit: int, batch_size: int) -> tuple[dict[str, float | None], float | None]:
    """(scores of greedy captions of the first ``limit`` images, share of those captions that end with <end>)."""
    from captioner.training.evaluation import score_captions

    model.eval()
    count = min(limit, len(inputs))
    predictions, references, ended = {}, {}, 0
    longest = model.config.max_length - 1  # <start> and max_length - 1 words: no <end> was reached
    for start in range(0, count, batch_size):
        rows = torch.arange(start, min(start + batch_size, count))
        inputs_batch, kept_rows = inputs.batch(rows)
        if inputs_batch is None:
            continue
        results = caption_features(model, vocab, inputs.features_of(model, inputs_batch), GREEDY)
        for row, result in zip(kept_rows.tolist(), results):
            predictions[str(row)] = result.caption
            references[str(row)] = list(captions[row])
            ended += bool(result.caption) and len(result.candidates[0].words) < longest
    if not predictions:
        return {}, None
    return score_captions(references, predictions, use_java=False), ended / len(predictions)


# ----------------------------------------------------------------------------- checkpoints


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


def _check_same_model(state: dict[str, Any], model: ShowAndTell, vocab: Vocabulary) -> None:
    config = {k: v for k, v in model.config.to_dict().items() if k != "extra"}
    stored = {k: v for k, v in state["config"].items() if k != "extra"}
    if stored != config or state["vocab"] != vocab.tokens:
        raise CaptionerError("the checkpoint belongs to a different model (configuration or vocabulary differ); "
                             "resume with the same data and options")


def _load_model_state(model: ShowAndTell, state: dict[str, Any]) -> None:
    if state["train_backbone"] != model.encoder.train_backbone:
        how = "with" if state["train_backbone"] else "without"
        raise CaptionerError(f"the checkpoint was trained {how} fine-tuning of the backbone; resume the same way")
    if not state["train_backbone"] and state["backbone_weights"] != weights_fingerprint(model.encoder.backbone):
        raise CaptionerError("the backbone's weights differ from those the checkpoint was trained with")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not name.startswith("encoder.backbone.") for name in missing) or (
            missing and state["train_backbone"]):
        raise CaptionerError("the checkpoint's weights do not fit the model")


def _write_checkpoint(path: Path, model: ShowAndTell, vocab: Vocabulary, optimizer: torch.optim.Optimizer,
                      shuffle: torch.Generator, result: TrainingResult, best_score: float, epoch: int,
                      schedule: Schedule | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        # A frozen backbone is stored as its fingerprint: its weights are the pretrained ones.
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
        "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()},
    }
    if schedule is not None:
        state["schedule"] = schedule.state_dict()
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, temp)
        with open(temp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


# ----------------------------------------------------------------------------- model card


def model_card(config: ModelConfig, vocab: Vocabulary, result: TrainingResult, info: CardInfo,
               settings: dict[str, Any] | None = None, plot: str | None = None) -> str:
    """README.md with Hub metadata, the data, the training settings and the validation scores."""
    best = result.best
    epochs = result.history[-1].epoch if result.history else 0
    lines = [
        f"# Show-and-Tell captioner ({config.backbone} + LSTM)", "",
        f"A {config.backbone} encoder ({config.encoder_output.replace('_', ' ')}) and an LSTM decoder "
        f"({config.hidden_size} units, {config.num_layers} layer(s), embeddings of {config.embed_size}), "
        f"vocabulary of {len(vocab)} tokens, trained with `python -m captioner train`.", "",
        "## Training data", "", info.data, "",
        "## Training", "",
        f"- epochs: {epochs}; best epoch: {result.best_epoch} "
        f"(chosen by {result.metric or 'validation loss'} on the validation set"
        f"{', among epochs whose captions end properly' if result.metric else ''})"
        + ("; stopped early: no better score for the patience allowed" if result.stopped_early else ""),
        f"- validation loss before training: {result.initial_val_loss:.4f}",
    ]
    lines += [f"- {name.replace('_', ' ')}: {value}" for name, value in (settings or {}).items()]
    lines += [f"- {line}" for text in result.plan for line in text.splitlines()]
    if plot:
        lines += ["", f"![Training history: losses and validation {result.metric or 'loss'} per epoch, the kept "
                      f"epoch marked]({plot})"]
    if best is not None:
        lines += ["", "## Validation scores (best epoch, greedy decoding)", "",
                  f"Validation loss {best.val_loss:.4f}."]
        if best.scores:
            lines += ["Computed by `captioner.evaluation.score_captions` without Java (so no METEOR); run "
                      "`python -m captioner evaluate` for the full set and for beam search.", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in best.scores.items() if value is not None]
    if result.history:
        metric = result.metric
        lines += ["", "## History", "", f"| epoch | train loss | val loss |{f' {metric} |' if metric else ''}"
                  " seconds |", f"|---|---|---|{'---|' if metric else ''}---|"]
        for e in result.history:
            value = e.scores.get(metric) if metric else None
            shown = f" {value:.4f} |" if value is not None else (" n/a |" if metric else "")
            lines.append(f"| {e.epoch}{' (best)' if e.best else ''} | {e.train_loss:.4f} | {e.val_loss:.4f} |"
                         f"{shown} {e.seconds:.1f} |")
    lines += ["", "## Limits", "", info.limits, ""]
    return build_card("\n".join(lines), license=info.license, datasets=list(info.datasets) or None,
                      tags=["image-captioning", "show-and-tell"])


def _epoch_line(stats: EpochStats, epochs: int, metric: str | None) -> str:
    parts = [f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, val loss {stats.val_loss:.4f}"]
    if metric:
        value = stats.scores.get(metric)
        parts.append(f"{metric} {value:.4f}" if value is not None else f"{metric} n/a")
    parts.append(f"{stats.seconds:.1f} s, {stats.captions_per_s:.0f} captions/s")
    if stats.best:
        parts[-1] += " (best, saved)"
    return ", ".join(parts)


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


# ----------------------------------------------------------------------------- image data sets


def build_config(vocab_size: int, backbone: str = "efficientnet-lite0", encoder_output: str = "features", *,
                 embed_size: int = 256, hidden_size: int = 512, num_layers: int = 1, max_length: int = 20,
                 image_size: int | None = None) -> ModelConfig:
    """A config with the backbone's own preprocessing; ``image_size`` scales its crop (and resize)."""
    from captioner.core.model.encoders import BACKBONES

    if backbone not in BACKBONES:
        raise CaptionerError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    size = image_size or spec.image_size
    resize = spec.resize if size == spec.image_size else round(size * spec.resize / spec.image_size)
    return ModelConfig(backbone=backbone, vocab_size=vocab_size, encoder_output=encoder_output,
                       embed_size=embed_size, hidden_size=hidden_size, num_layers=num_layers,
                       max_length=max_length, image_size=size, resize=resize, mean=spec.mean, std=spec.std)


def train_captioner(
    items: Sequence[Any],
    val_items: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    backbone: str = "efficientnet-lite0",
    encoder_output: str = "features",
    epochs: int | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
    warmup_steps: int | None = None,
    lr_schedule: str = "plateau",
    batch_size: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    min_word_count: int | None = None,
    embed_size: int = 256,
    hidden_size: int = 512,
    num_layers: int = 1,
    max_length: int = 20,
    image_size: int | None = None,
    train_backbone: bool = False,
    backbone_lr: float | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    extraction_batch_size: int = 32,
    metric: str | None = DEFAULT_METRIC,
    metric_images: int = 500,
    card: CardInfo | None = None,
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
    new_words: str = "add",
    precision: str = "auto",
    compile: bool = False,
    workers: int | None = None,
    report: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingResult:
    """Train on ``items`` (``datasets.CaptionedImage``), validate on ``val_items``, write ``out_dir``.

    Settings left as None are chosen from the data (``plan``): the vocabulary threshold, the
    batch size, the warm-up and, unless ``epochs`` fixes the number of epochs, early stopping
    with a patience up to ``max_epochs``. ``init_from`` (a model folder, ``owner/name`` or
    ``"bundled"``) starts from a trained model (``finetune.init_from``; ``new_words``: add or
    report). What was chosen goes to ``report`` (default: stderr when ``progress``), before any
    image is encoded. With a frozen backbone, its outputs come from the feature cache in
    ``cache_dir`` (``features.default_cache_dir()`` when None). On ``resume`` the vocabulary and
    architecture come from ``out_dir/checkpoint.pt``.
    """
    from captioner.core.model.encoders import load_pretrained_weights
    from captioner.training import plan as planning
    from captioner.training.finetune import init_from as start_from

    say = report or (_say if progress else (lambda text: None))
    planning.check_dependencies(metric)
    device = select_device(device)
    _precision(device, precision)
    if not items:
        raise CaptionerError("there are no training images")
    if not val_items:
        raise CaptionerError("there are no validation images")
    planning.check_output_folder(out_dir, resume)
    train_texts = [c for item in items for c in item.captions]
    val_texts = [c for item in val_items for c in item.captions]
    lines: list[str] = []
    source = None
    if init_from is not None or not resume:
        choice = planning.choose_vocabulary(train_texts, val_texts, min_word_count)
        if init_from is None:
            vocab = choice.vocab
            config = build_config(len(vocab), backbone, encoder_output, embed_size=embed_size,
                                  hidden_size=hidden_size, num_layers=num_layers, max_length=max_length,
                                  image_size=image_size)
            lines.append(choice.report())
        else:
            source = start_from(None if str(init_from) == "bundled" else init_from, train_texts,
                                min_count=choice.min_count, new_words=new_words)
            vocab, config = source.vocab, source.model.config
            lines.append(source.report())
    if resume:
        state = read_checkpoint(out_dir)
        vocab = Vocabulary(state["vocab"])
        config = ModelConfig.from_dict({k: v for k, v in state["config"].items() if k != "extra"})
        lines.append("vocabulary and architecture: from the checkpoint being resumed")
    if metric and len(val_items) < 5:
        lines.append(f"warning: {len(val_items)} validation image(s) are too few for {metric} to choose an epoch "
                     f"well; give more with --val-annotations or --val-fraction")
    for line in lines:
        say(line)
    if source is not None:
        model = source.model if len(source.vocab) == config.vocab_size else ShowAndTell(config)
    else:
        torch.manual_seed(seed)
        model = ShowAndTell(config)
        load_pretrained_weights(model.encoder.backbone, config.backbone)
    model.to(device)
    skipped: list[tuple[str, str]] = []
    if train_backbone:
        model.encoder.train_backbone = True
        train_inputs: torch.Tensor | Inputs = ImageInputs([i.image_path for i in items], config, device)
        val_inputs: torch.Tensor | Inputs = ImageInputs([i.image_path for i in val_items], config, device)
        train_caps, val_caps = [i.captions for i in items], [i.captions for i in val_items]
    else:
        train_found = extract_features(model, [i.image_path for i in items], cache_dir,
                                       batch_size=extraction_batch_size, progress=progress)
        val_found = extract_features(model, [i.image_path for i in val_items], cache_dir,
                                     batch_size=extraction_batch_size, progress=progress)
        skipped = train_found.failures + val_found.failures
        train_inputs, train_caps = train_found.features, _captions_of(items, train_found)
        val_inputs, val_caps = val_found.features, _captions_of(val_items, val_found)
        for found, total, which in ((train_found, len(items), "training"), (val_found, len(val_items), "validation")):
            if not found.kept:
                path, why = found.failures[0] if found.failures else ("?", "unknown")
                raise CaptionerError(f"none of the {total} {which} images could be read (e.g. {path}: {why})")
        for path, reason in skipped[:10]:
            say(f"skipped {path}: {reason}")
        if len(skipped) > 10:
            say(f"... and {len(skipped) - 10} more unusable images")
    steps = planning.plan_steps(sum(map(len, train_caps)), batch_size=batch_size, epochs=epochs,
                                max_epochs=max_epochs, patience=patience, warmup_steps=warmup_steps, lr=lr,
                                lr_schedule=lr_schedule, metric=metric)
    say(steps.report())
    settings = {
        "images (train / validation)": f"{len(train_caps)} / {len(val_caps)}",
        "captions (train / validation)": f"{sum(map(len, train_caps))} / {sum(map(len, val_caps))}",
        "backbone": f"{config.backbone}, {'fine-tuned' if train_backbone else 'frozen'}"
                    + (f", from {source.source}" if source is not None else " (ImageNet weights)"),
        "seed": seed,
    }
    try:
        result = fit_decoder(model, vocab, train_inputs, train_caps, val_inputs, val_caps, out_dir,
                             epochs=steps.max_epochs, batch_size=steps.batch_size, lr=lr, backbone_lr=backbone_lr,
                             seed=seed, device=device, metric=metric, metric_images=metric_images, resume=resume,
                             card=card, settings=settings, progress=progress, patience=steps.patience,
                             warmup_steps=steps.warmup_steps, lr_schedule=lr_schedule, precision=precision,
                             compile=compile, workers=workers, keep_batchnorm=source is not None,
                             plan=[*lines, steps.report()], on_epoch=on_epoch)
    finally:
        for inputs in (train_inputs, val_inputs):
            if isinstance(inputs, ImageInputs):
                inputs.close()
    result.skipped_images = skipped + result.skipped_images
    return result


def _captions_of(items: Sequence[Any], found: ExtractedFeatures) -> list[list[str]]:
    return [list(items[i].captions) for i in found.kept]


def most_common_caption(captions: Sequence[Sequence[str]]) -> str:
    """The single most frequent training caption (the constant-caption baseline)."""
    counts = Counter(" ".join(c.lower().split()) for image in captions for c in image)
    return counts.most_common(1)[0][0]


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationResult:
    decodings: dict[str, dict[str, float | None]]  # decoding name ("greedy", "beam-3") -> scores
    captions: dict[str, dict[str, str]]  # decoding name -> image id -> caption
    references: dict[str, list[str]]
    paths: dict[str, str]  # image id -> file
    skipped: list[tuple[str, str]]  # (path, why)

    def to_json(self) -> dict[str, Any]:
        return {
            "scores": self.decodings,
            "images": [{"image_id": key, "image": self.paths[key], "references": refs,
                        "captions": {name: caps[key] for name, caps in self.captions.items()}}
                       for key, refs in self.references.items()],
            "skipped": [{"image": path, "reason": reason} for path, reason in self.skipped],
        }


def decoding_name(beam_size: int) -> str:
    return "greedy" if beam_size == 1 else f"beam-{beam_size}"


def evaluate_captioner(captioner: Any, items: Sequence[Any], *, beam_sizes: Sequence[int] = (3,),
                       batch_size: int = 16, max_length: int | None = None, use_java: bool = True,
                       progress: bool = True) -> EvaluationResult:
    """Caption every item with each beam size (1 = greedy) and score each decoding.

    ``captioner`` is an ``inference.Captioner``; each batch of images is encoded once and decoded
    with every beam size. Unusable images are skipped and listed.
    """
    from tqdm import tqdm

    from captioner.training.evaluation import score_captions

    if not items:
        raise CaptionerError("there are no images to evaluate")
    names = [decoding_name(k) for k in beam_sizes]
    captions: dict[str, dict[str, str]] = {name: {} for name in names}
    references, paths, skipped = {}, {}, []
    model = captioner.model
    with ThreadPoolExecutor(2) as pool:
        for start in tqdm(range(0, len(items), batch_size), desc="captioning", unit="batch", disable=not progress,
                          file=sys.stderr):
            batch = items[start:start + batch_size]
            pixels, kept, failures = captioner.pipeline.load([i.image_path for i in batch], pool)
            skipped += [(str(batch[index].image_path), why) for index, why in failures]
            if pixels is None:
                continue
            features = captioner.pipeline.features(pixels)  # encoded once, decoded with every beam size
            for name, beam in zip(names, beam_sizes):
                options = DecodeOptions(beam_size=beam, num_candidates=1, max_length=max_length, top_classes=0)
                for index, result in zip(kept, caption_features(model, captioner.vocab, features, options)):
                    captions[name][batch[index].image_id] = result.caption
            for index in kept:
                item = batch[index]
                references[item.image_id] = list(item.captions)
                paths[item.image_id] = str(item.image_path)
    if not references:
        raise CaptionerError("none of the images could be read")
    scores = {name: score_captions(references, captions[name], use_java=use_java) for name in names}
    return EvaluationResult(scores, captions, references, paths, skipped)
