"""Training a Show-and-Tell model, and scoring a trained one on a captioned data set.

``fit_decoder`` is the core: it trains the decoder and the encoder's projection from
precomputed backbone outputs (an ``N x D`` matrix, several captions per row) or, when the
backbone is fine-tuned, from the images themselves. Teacher forcing over packed sequences,
Adam, gradient clipping; after every epoch the validation loss and (optionally) a caption
metric on greedy captions of validation images; the best epoch is saved as a model
directory, and ``checkpoint.pt`` in that directory holds what ``resume`` needs.

``train_captioner`` is the whole job for an image data set: vocabulary, model, feature
cache (``features.py``), ``fit_decoder``, model card. ``evaluate_captioner`` captions a data
set with one or more decodings and scores each with ``evaluation.score_captions``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captioner.core.config import ModelConfig
from captioner.core.devices import select_device
from captioner.core.inference import caption_features
from captioner.core.options import DecodeOptions
from captioner.core.errors import CaptionerError
from captioner.training.features import ExtractedFeatures, extract_features, weights_fingerprint
from captioner.core.images import load_pixels, preprocessor_for
from captioner.core.modelcard import build_card
from captioner.core.model import ShowAndTell, packed_targets
from captioner.core.repository import save_model
from captioner.core.vocabulary import PAD_ID, Vocabulary

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


@dataclass
class TrainingResult:
    history: list[EpochStats]
    initial_val_loss: float  # before the first epoch
    best_epoch: int  # 0 when no epoch ran
    metric: str | None  # what chose the best epoch; None: the validation loss
    out_dir: Path
    skipped_images: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

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
    """Precomputed backbone outputs: a batch is a slice of the matrix."""

    def __init__(self, features: torch.Tensor, device: torch.device):
        if features.dim() != 2:
            raise ValueError(f"features must be an N x D matrix, got shape {tuple(features.shape)}")
        fits = device.type == "cuda" and features.numel() * 4 < 4 * 2**30
        self.features = features.float().to(device if fits else "cpu")
        self.device = device

    def __len__(self) -> int:
        return self.features.shape[0]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone outputs on the device, the rows they belong to)."""
        return self.features[rows.to(self.features.device)].to(self.device, non_blocking=True), rows

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    def embed(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return model.encoder.project(inputs)


class ImageInputs:
    """Image files, run through the whole encoder every step (for fine-tuning the backbone).

    An image that cannot be loaded is dropped from its batch and listed in ``failures``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], config: ModelConfig, device: torch.device,
                 workers: int = 2):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocessor_for(config)
        self.device = device
        self.pool = ThreadPoolExecutor(max(1, workers))
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        paths = [self.paths[i] for i in rows.tolist()]
        pixels, kept, failures = load_pixels(paths, self.preprocess, self.pool)
        self.failures.update((paths[i], why) for i, why in failures)
        if pixels is None:
            return None, rows[:0]
        return pixels.to(self.device, non_blocking=True), rows[torch.tensor(kept, dtype=torch.long)]

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return model.encoder.backbone_features(inputs)

    def embed(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return model.encoder(inputs)


Inputs = FeatureInputs | ImageInputs
GREEDY = DecodeOptions(beam_size=1, top_classes=0)


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
) -> TrainingResult:
    """Train ``model`` (decoder and projection; the backbone too when ``model.encoder.train_backbone``).

    ``train_inputs`` is a float ``N x D`` matrix of backbone outputs (``encoder.backbone_features``)
    or ``ImageInputs``; ``train_captions[i]`` are the captions of row ``i``. ``metric`` (a name
    from ``evaluation.METRICS`` or None) is computed each epoch on greedy captions of the first
    ``metric_images`` validation images and picks the best epoch (else the validation loss
    does). The best epoch is saved to ``out_dir`` as a model directory; ``out_dir/checkpoint.pt``
    holds the last epoch, and ``resume=True`` continues from it up to ``epochs`` in all.
    ``settings`` are extra facts for the model card. ``model`` ends with the last epoch's weights.
    The saved model includes ``model``'s backbone: it must be the one that produced the features
    (e.g. ``load_pretrained_weights`` applied), or the saved model will not caption as validated.
    """
    device = select_device(device)
    out_dir = Path(out_dir)
    if len(train_captions) != len(train_inputs) or len(val_captions) != len(val_inputs):
        raise ValueError("each input row needs its list of captions")
    if len(val_inputs) == 0:
        raise CaptionerError("there are no validation images")
    card = card or CardInfo()
    if metric is not None and metric not in CHEAP_METRICS:
        raise CaptionerError(f"unknown validation metric {metric!r}; choose one of {', '.join(CHEAP_METRICS)}")
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
    optimizer = torch.optim.Adam(parameters)
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
        for group, wanted in zip(optimizer.param_groups, parameters):
            group["lr"] = wanted["lr"]  # the lr asked for now wins over the stored one
        shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        history = [EpochStats(**entry) for entry in state["history"]]
        best_epoch, best_score = state["best_epoch"], state["best_score"]
        initial_val_loss, start = state["initial_val_loss"], state["epoch"] + 1
    elif checkpoint_path.exists():
        raise CaptionerError(f"{out_dir} already holds a training checkpoint; resume it (--resume) "
                             "or choose another output directory")
    else:
        torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    if not resume:
        if isinstance(train, FeatureInputs):
            _precise_batchnorm(model, train)
        initial_val_loss = _validation_loss(model, val, val_pairs, batch_size)
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        train_loss, seen = _train_epoch(model, train, train_pairs, optimizer, shuffle, batch_size, clip,
                                        f"epoch {epoch}/{epochs}", progress)
        train_seconds = time.perf_counter() - began
        if isinstance(train, FeatureInputs):
            _precise_batchnorm(model, train)
        val_loss = _validation_loss(model, val, val_pairs, batch_size)
        scores = _validation_scores(model, vocab, val, val_captions, metric_images, batch_size) if metric else {}
        score = scores.get(metric) if metric else -val_loss
        stats = EpochStats(epoch, train_loss, val_loss, scores, time.perf_counter() - began,
                           seen / train_seconds if train_seconds > 0 else 0.0)
        if score is not None and score > best_score:
            best_epoch, best_score, stats.best = epoch, score, True
        history.append(stats)
        result = TrainingResult(history, initial_val_loss, best_epoch, metric, out_dir)
        if stats.best:
            save_model(model, vocab, out_dir, card=model_card(model.config, vocab, result, card, settings))
        _write_checkpoint(checkpoint_path, model, vocab, optimizer, shuffle, result, best_score, epoch)
        if progress:
            _say(_epoch_line(stats, epochs, metric))
    result = TrainingResult(history, initial_val_loss, best_epoch, metric, out_dir)
    if best_epoch:  # the card of the best model, now with the whole history
        _write_text(out_dir / "README.md", model_card(model.config, vocab, result, card, settings))
    if isinstance(train, ImageInputs):
        result.skipped_images = sorted({**train.failures, **getattr(val, "failures", {})}.items())
    return result


def _train_epoch(model: ShowAndTell, inputs: Inputs, pairs: _Pairs, optimizer: torch.optim.Optimizer,
                 shuffle: torch.Generator, batch_size: int, clip: float, desc: str,
                 progress: bool) -> tuple[float, int]:
    from tqdm import tqdm

    model.train()
    if model.encoder.train_backbone:  # keep the backbone's BatchNorm statistics as pretrained
        for module in model.encoder.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    else:
        model.encoder.backbone.eval()
    order = torch.randperm(len(pairs), generator=shuffle)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one row
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    total, tokens_seen, pairs_seen = 0.0, 0, 0
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False)
    for index in bar:
        rows, captions, lengths = pairs.select(index)
        inputs_batch, kept_rows = inputs.batch(torch.unique(rows))
        if inputs_batch is None or len(kept_rows) < 2:  # BatchNorm needs two images
            continue
        if len(kept_rows) < len(torch.unique(rows)):  # images that failed to load: drop their pairs
            keep = torch.isin(rows, kept_rows)
            rows, captions, lengths = rows[keep], captions[keep], lengths[keep]
        if len(rows) < 2:
            continue
        position = torch.searchsorted(kept_rows, rows)
        embeddings = inputs.embed(model, inputs_batch)[position.to(inputs_batch.device)]
        loss = _loss(model, embeddings, captions, lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        optimizer.step()
        count = int(lengths.sum())
        total += loss.item() * count
        tokens_seen += count
        pairs_seen += len(rows)
        bar.set_postfix(loss=f"{total / tokens_seen:.3f}", refresh=False)
    bar.close()
    return total / max(tokens_seen, 1), pairs_seen


def _loss(model: ShowAndTell, embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    captions = captions.to(embeddings.device, non_blocking=True)
    length_list = lengths.tolist()
    logits = model.decoder(embeddings, captions, length_list)
    return nn.functional.cross_entropy(logits, packed_targets(captions, length_list))


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
        embeddings = inputs.embed(model, inputs_batch)[torch.searchsorted(kept_rows, rows).to(inputs_batch.device)]
        count = int(lengths.sum())
        total += _loss(model, embeddings, captions, lengths).item() * count
        tokens += count
    return total / tokens if tokens else math.nan


@torch.no_grad()
def _validation_scores(model: ShowAndTell, vocab: Vocabulary, inputs: Inputs, captions: Sequence[Sequence[str]],
                       limit: int, batch_size: int) -> dict[str, float | None]:
    from captioner.training.evaluation import score_captions

    model.eval()
    count = min(limit, len(inputs))
    predictions, references = {}, {}
    for start in range(0, count, batch_size):
        rows = torch.arange(start, min(start + batch_size, count))
        inputs_batch, kept_rows = inputs.batch(rows)
        if inputs_batch is None:
            continue
        results = caption_features(model, vocab, inputs.features_of(model, inputs_batch), GREEDY)
        for row, result in zip(kept_rows.tolist(), results):
            predictions[str(row)] = result.caption
            references[str(row)] = list(captions[row])
    if not predictions:
        return {}
    return score_captions(references, predictions, use_java=False)


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
                      shuffle: torch.Generator, result: TrainingResult, best_score: float, epoch: int) -> None:
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
               settings: dict[str, Any] | None = None) -> str:
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
        f"(chosen by {result.metric or 'validation loss'} on the validation set)",
        f"- validation loss before training: {result.initial_val_loss:.4f}",
    ]
    lines += [f"- {name.replace('_', ' ')}: {value}" for name, value in (settings or {}).items()]
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
    from captioner.core.encoders import BACKBONES

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
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    min_word_count: int = 4,
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
) -> TrainingResult:
    """Train on ``items`` (``datasets.CaptionedImage``), validate on ``val_items``, write ``out_dir``.

    With a frozen backbone, its outputs come from the feature cache in ``cache_dir``
    (``features.default_cache_dir()`` when None). On ``resume`` the vocabulary and architecture
    come from ``out_dir/checkpoint.pt``.
    """
    from captioner.core.encoders import load_pretrained_weights

    device = select_device(device)
    if not items:
        raise CaptionerError("there are no training images")
    if not resume and (Path(out_dir) / CHECKPOINT).exists():
        raise CaptionerError(f"{out_dir} already holds a training checkpoint; resume it (--resume) "
                             "or choose another output directory")
    if resume:
        state = read_checkpoint(out_dir)
        vocab = Vocabulary(state["vocab"])
        config = ModelConfig.from_dict({k: v for k, v in state["config"].items() if k != "extra"})
    else:
        vocab = Vocabulary.build((c for item in items for c in item.captions), min_count=min_word_count)
        config = build_config(len(vocab), backbone, encoder_output, embed_size=embed_size, hidden_size=hidden_size,
                              num_layers=num_layers, max_length=max_length, image_size=image_size)
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
        if progress:
            for path, reason in skipped[:10]:
                _say(f"skipped {path}: {reason}")
            if len(skipped) > 10:
                _say(f"... and {len(skipped) - 10} more unusable images")
    settings = {
        "images (train / validation)": f"{len(train_caps)} / {len(val_caps)}",
        "captions (train / validation)": f"{sum(map(len, train_caps))} / {sum(map(len, val_caps))}",
        "vocabulary": f"words seen at least {min_word_count} times in the training captions"
        if not resume else "from the first run",
        "backbone": f"{config.backbone}, {'fine-tuned' if train_backbone else 'frozen (ImageNet weights)'}",
        "batch size": batch_size, "learning rate": lr, "seed": seed,
    }
    try:
        result = fit_decoder(model, vocab, train_inputs, train_caps, val_inputs, val_caps, out_dir, epochs=epochs,
                             batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, seed=seed, device=device,
                             metric=metric, metric_images=metric_images, resume=resume, card=card,
                             settings=settings, progress=progress)
    finally:
        for inputs in (train_inputs, val_inputs):
            if isinstance(inputs, ImageInputs):
                inputs.pool.shutdown()
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

    ``captioner`` is a ``service.Captioner``; each batch of images is encoded once and decoded
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
            pixels, kept, failures = load_pixels([i.image_path for i in batch], captioner.preprocess, pool)
            skipped += [(str(batch[index].image_path), why) for index, why in failures]
            if pixels is None:
                continue
            features = captioner.backbone_features(pixels)  # encoded once, decoded with every beam size
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
