"""The ``train`` job on an image data set: where to start, vocabulary, features, the loop, finishing steps.

``train_captioner`` reads top to bottom: the starting point (``finetune.choose_start``: the bundled
model fine-tuned unless ``from_scratch``), the vocabulary, the settings chosen from the data
(``plan``), the backbone outputs from the feature cache (``features``), ``fit.fit_decoder``, then
each of ``FINISHING_STEPS`` on the kept model. Everything chosen is reported before any image is
encoded.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from captioner.core.devices import select_device
from captioner.core.errors import CaptionerError, DatasetError
from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.repository.storage import LoadedModel, load_model
from captioner.training import plan as planning
from captioner.training.checkpoint import read_checkpoint
from captioner.training.config import FINE_TUNING, FROM_SCRATCH, TrainConfig
from captioner.training.datasets import CaptionedImage
from captioner.training.features import ExtractedFeatures, extract_features
from captioner.training.finetune import Start, add_new_words, choose_start
from captioner.training.fit import RunNotes, autocast_dtype, fit_decoder, say
from captioner.training.inputs import ImageInputs, Inputs
from captioner.training.results import EpochStats, TrainingResult

SCRATCH_ARCHITECTURE = {"backbone": "efficientnet-lite0", "encoder_output": "features", "embed_size": 256,
                        "hidden_size": 512, "num_layers": 1, "max_length": 20}


@dataclass
class Finished:
    """What a finishing step gets: the kept model (as saved in ``result.out_dir``) and the validation data."""

    model: LoadedModel
    val_items: list[CaptionedImage]  # the validation images and their captions
    val_features: torch.Tensor | None  # their backbone outputs, in the order of ``val_items`` (None: not cached)
    result: TrainingResult
    say: Callable[[str], None]


FinishingStep = Callable[[Finished], None]
# Run in order after training on the kept model; a step may add files to ``result.out_dir``.
FINISHING_STEPS: list[FinishingStep] = []


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


def train_captioner(items: Sequence[CaptionedImage], val_items: Sequence[CaptionedImage],
                    out_dir: str | os.PathLike, config: TrainConfig = TrainConfig(), *, start: Start | None = None,
                    report: Callable[[str], None] | None = None,
                    on_epoch: Callable[[EpochStats], None] | None = None,
                    finishing: Sequence[FinishingStep] = FINISHING_STEPS) -> TrainingResult:
    """Train on ``items``, validate on ``val_items``, write the kept model to ``out_dir``.

    ``start`` is ``finetune.choose_start(config)`` when the caller has chosen it already (to say so
    first). Settings left as None in ``config`` are chosen from the data and the start, and
    reported through ``report`` (default: stderr when ``config.progress``). On ``resume`` the
    vocabulary and architecture come from ``out_dir/checkpoint.pt``.
    """
    tell = report or (say if config.progress else (lambda text: None))
    planning.check_dependencies(config.metric)
    device = select_device(config.device)
    autocast_dtype(device, config.precision)
    if not items:
        raise DatasetError("there are no training images")
    if not val_items:
        raise DatasetError("there are no validation images")
    planning.check_output_folder(out_dir, config.resume)
    if start is None:
        start = choose_start(config)
        tell(start.report())
    train_texts = [c for item in items for c in item.captions]
    choice = planning.choose_vocabulary(train_texts, [c for item in val_items for c in item.captions],
                                        config.min_word_count)
    lines: list[str] = []
    if start.fine_tuning:
        add_new_words(start, train_texts, min_count=choice.min_count, new_words=config.new_words)
        vocab, model_config = start.vocab, start.model.config
        lines.append(start.words_report())
    else:
        arch = {name: getattr(config, name) if getattr(config, name) is not None else default
                for name, default in SCRATCH_ARCHITECTURE.items()}
        vocab = choice.vocab
        model_config = build_config(len(vocab), image_size=config.image_size, **arch)
        lines.append(choice.report())
    if config.resume:
        state = read_checkpoint(out_dir)
        vocab = Vocabulary(state["vocab"])
        model_config = ModelConfig.from_dict({k: v for k, v in state["config"].items() if k != "extra"})
        lines.append("vocabulary and architecture: from the checkpoint being resumed")
    if config.metric and len(val_items) < 5:
        lines.append(f"warning: {len(val_items)} validation image(s) are too few for {config.metric} to choose an "
                     f"epoch well; give more with --val-annotations or --val-fraction")
    for line in lines:
        tell(line)
    model = _new_model(start, model_config, config.seed)
    model.encoder.train_backbone = config.train_backbone
    model.to(device)

    data = _inputs(model, items, val_items, config, device, tell)
    train_inputs, train_caps, val_inputs, val_caps = data.train, data.train_captions, data.val, data.val_captions
    steps = planning.plan_steps(sum(map(len, train_caps)), batch_size=config.batch_size, epochs=config.epochs,
                                max_epochs=config.max_epochs, patience=config.patience,
                                warmup_steps=config.warmup_steps, lr=config.lr, lr_schedule=config.lr_schedule,
                                metric=config.metric)
    regularisation = config.regularisation or (FINE_TUNING if start.fine_tuning else FROM_SCRATCH)
    tell(steps.report())
    tell(f"regularisation: {planning.describe(regularisation)}"
         + (" (the defaults for " + ("fine-tuning)" if start.fine_tuning else "training from scratch)")
            if config.regularisation is None else " (as asked)"))
    resolved = dataclasses.replace(config, epochs=steps.max_epochs, patience=steps.patience,
                                   batch_size=steps.batch_size, warmup_steps=steps.warmup_steps,
                                   regularisation=regularisation, device=str(device))
    settings = {
        "images (train / validation)": f"{len(train_caps)} / {len(val_caps)}",
        "captions (train / validation)": f"{sum(map(len, train_caps))} / {sum(map(len, val_caps))}",
        "backbone": f"{model_config.backbone}, {'fine-tuned' if config.train_backbone else 'frozen'}"
                    + (f", from {start.source}" if start.fine_tuning else " (ImageNet weights)"),
        "regularisation": planning.describe(regularisation),
        "seed": config.seed,
    }
    notes = RunNotes(settings, [start.report(), *lines, steps.report()], start.source, start.hub_id)
    try:
        result = fit_decoder(model, vocab, train_inputs, train_caps, val_inputs, val_caps, out_dir, resolved,
                             notes=notes, on_epoch=on_epoch)
    finally:
        for inputs in (train_inputs, val_inputs):
            if isinstance(inputs, ImageInputs):
                inputs.close()
    result.skipped_images = data.skipped + result.skipped_images
    if result.best_epoch or result.kept_start:
        tell(result.verdict())
        kept = load_model(result.out_dir, "cpu")
        features = val_inputs if isinstance(val_inputs, torch.Tensor) else None
        for step in finishing:
            step(Finished(kept, [val_items[i] for i in data.val_rows], features, result, tell))
    return result


def _new_model(start: Start, config: ModelConfig, seed: int) -> ShowAndTell:
    """The model to train: the starting model, or a new one with ImageNet backbone weights (or the start's)."""
    from captioner.core.model.encoders import load_pretrained_weights

    if start.fine_tuning and start.model.config == config:
        return start.model
    torch.manual_seed(seed)
    model = ShowAndTell(config)
    if start.fine_tuning:  # resuming: the checkpoint's architecture, the starting model's backbone
        model.encoder.backbone.load_state_dict(start.model.encoder.backbone.state_dict())
    else:
        load_pretrained_weights(model.encoder.backbone, config.backbone)
    return model


@dataclass
class _Inputs:
    train: torch.Tensor | Inputs
    train_captions: list[list[str]]
    val: torch.Tensor | Inputs
    val_captions: list[list[str]]
    val_rows: list[int]  # the validation items that could be read, in order
    skipped: list[tuple[str, str]]  # (path, why) of the images that could not


def _inputs(model: ShowAndTell, items: Sequence[CaptionedImage], val_items: Sequence[CaptionedImage],
            config: TrainConfig, device: torch.device, tell: Callable[[str], None]) -> _Inputs:
    """Backbone outputs from the feature cache (frozen backbone), else the images themselves."""
    if config.train_backbone:
        return _Inputs(ImageInputs([i.image_path for i in items], model.config, device),
                       [list(i.captions) for i in items],
                       ImageInputs([i.image_path for i in val_items], model.config, device),
                       [list(i.captions) for i in val_items], list(range(len(val_items))), [])
    found = {}
    for which, group in (("training", items), ("validation", val_items)):
        found[which] = extract_features(model, [i.image_path for i in group], config.cache_dir,
                                        batch_size=config.extraction_batch_size, progress=config.progress)
        if not found[which].kept:
            raise DatasetError(_none_readable(which, group, found[which]))
    skipped = found["training"].failures + found["validation"].failures
    for path, reason in skipped[:10]:
        tell(f"skipped {path}: {reason}")
    if len(skipped) > 10:
        tell(f"... and {len(skipped) - 10} more unusable images")
    train, val = found["training"], found["validation"]
    return _Inputs(train.features, [list(items[i].captions) for i in train.kept], val.features,
                   [list(val_items[i].captions) for i in val.kept], list(val.kept), skipped)


def _none_readable(which: str, group: Sequence[CaptionedImage], found: ExtractedFeatures) -> str:
    examples = "; ".join(f"{path}: {why}" for path, why in found.failures[:3]) or "unknown"
    return f"none of the {len(group)} {which} images could be read (e.g. {examples})"
