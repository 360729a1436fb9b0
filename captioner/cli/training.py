"""Training and evaluation: ``train`` (a model from a caption data set) and ``evaluate`` (BLEU, METEOR,
ROUGE-L, CIDEr of a model on one)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from captioner.cli.arguments import DECODING, DEVICE, MODEL, POSITIVE, command, load_settings


def run_train(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    if args.metric.lower() != "none":
        require_extra("train", "pycocoevalcap", purpose=f"training with the {args.metric} validation metric")
    from captioner.training.config import CardInfo
    from captioner.training.finetune import choose_start
    from captioner.training.job import train_captioner
    from captioner.training.plan import check_dependencies, regularisation_for

    config = _train_config(args)
    check_dependencies(config.metric)  # before the data is read or an image encoded
    start = choose_start(config)
    print(start.report(), flush=True)  # the first line: fine-tuning or from scratch, and why
    train_items, val_items, reports, how = _training_data(args)
    for report in reports:
        print(report.summary())
    print(f"Training on {len(train_items)} images; validating on {len(val_items)} ({how}).", flush=True)
    source = Path(args.annotations) if args.annotations else Path(args.images)
    data = (f"{args.format} data from `{source.name}`: {len(train_items)} training images with "
            f"{sum(len(i.captions) for i in train_items)} captions; validation on {len(val_items)} images ({how}).")
    card = CardInfo(data=data, datasets=tuple(args.dataset_name or [source.stem]), license=config.card.license)
    config = replace(config, card=card, regularisation=regularisation_for(start.fine_tuning, args.dropout,
                                                                          args.weight_decay, args.label_smoothing,
                                                                          args.freeze_projection))
    result = train_captioner(train_items, val_items, args.out, config, start=start,
                             report=lambda line: print(line, flush=True))
    best = result.best
    if best is None and not result.kept_start and any(e.epoch > 0 for e in result.history):
        print("error: no epoch's validation captions ended properly (at least 90% must reach <end> within "
              "--max-length), so no model was written; train longer (--resume with more epochs) or raise "
              "--max-length", file=sys.stderr)
        return 1
    if best is None and not result.kept_start:
        done = result.history[-1].epoch if result.history else 0
        print(f"nothing to do: {args.out} already has {done} epochs"
              + ("" if result.stopped_early else " (raise --epochs or --max-epochs to train more)"))
        return 0
    if best is not None:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in best.scores.items() if value is not None)
        print(f"best epoch {best.epoch} of {result.history[-1].epoch}"
              f"{' (stopped early: no better score for the patience allowed)' if result.stopped_early else ''}: "
              f"val loss {best.val_loss:.4f}{', ' + scores if scores else ''}")
    if result.skipped_images:
        print(f"skipped {len(result.skipped_images)} unusable images (e.g. {result.skipped_images[0][0]}: "
              f"{result.skipped_images[0][1]})")
    print(f"wrote {args.out} (training.png: the losses and {config.metric or 'validation loss'} per epoch)")
    return 0


def _train_config(args: argparse.Namespace):
    """The ``TrainConfig`` of the command line's arguments (its fields share their names)."""
    from dataclasses import fields

    from captioner.training.config import UNKNOWN_LICENSE, CardInfo, TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["metric"] = None if args.metric.lower() == "none" else args.metric
    values["keep_better_start"] = not args.keep_trained
    values["card"] = CardInfo(license=args.license or UNKNOWN_LICENSE)
    return TrainConfig(**values)


def _training_data(args: argparse.Namespace):
    """(train items, validation items, reports, how the validation set was chosen)."""
    from captioner.core.errors import DatasetError
    from captioner.training.datasets import holdout_fraction, read_dataset, require_images, split_holdout

    fmt, images = args.format, Path(args.images)
    annotations = Path(args.annotations) if args.annotations else None
    if fmt == "flickr8k" and args.split_file is None:
        try:  # the standard split lists next to the token file
            items, report = read_dataset(fmt, annotations, images, split="train")
        except DatasetError:
            items, report = read_dataset(fmt, annotations, images)
    else:
        items, report = read_dataset(fmt, annotations, images, split_file=args.split_file)
    require_images(items, report, images)
    reports = [report]
    train = [i for i in items if i.split in (None, "train")]
    val = [i for i in items if i.split == "val"]
    how = "the data's own validation split"
    if args.val_annotations:
        val, val_report = read_dataset(fmt, Path(args.val_annotations), Path(args.val_images or images))
        require_images(val, val_report, Path(args.val_images or images))
        if any(i.split == "val" for i in val):
            val = [i for i in val if i.split == "val"]
        reports.append(val_report)
        how = f"images of {Path(args.val_annotations).name}"
    elif not val and fmt == "flickr8k":
        try:
            val, val_report = read_dataset(fmt, annotations, images, split="val")
            reports.append(val_report)
        except DatasetError:
            val = []
    if not val:
        fraction = args.val_fraction or holdout_fraction(len(train))
        train, val = split_holdout(train, fraction, args.seed, report)
        how = f"a held-out {fraction:.3g} of the training images"
    if not train:
        raise DatasetError("no training images left: check the data's split labels")
    return train, val, reports, how


def add_train(sub) -> None:
    from captioner.core.model.config import ENCODER_OUTPUTS
    from captioner.training.config import PRECISIONS, TrainConfig
    from captioner.training.datasets import FORMATS

    defaults = TrainConfig()
    p = command(sub, "train", run_train, parents=[DEVICE],
                help="train a model on a caption data set (fine-tunes the bundled model by default)",
                description="Train a Show-and-Tell model on your captions. By default it fine-tunes the "
                            "bundled model (or --init-from SRC), keeping its encoder and vocabulary and "
                            "adding your new words, and keeps the starting model when no epoch beats it on "
                            "the validation images; --from-scratch trains a new model. Validation images: "
                            "--val-annotations, else the data's own val split (karpathy, flickr8k lists, a "
                            "csv split column), else a held-out --val-fraction of the training images. "
                            "Unset settings are chosen from the data and reported. The tutorial's settings: "
                            "--from-scratch --epochs 5 --batch-size 128 --min-word-count 4 --lr 0.001 "
                            "--warmup-steps 0 --lr-schedule constant --dropout 0 --weight-decay 0 "
                            "--label-smoothing 0.")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="folder: an image folder holding captions.csv or captions.jsonl (image,caption rows)")
    p.add_argument("--annotations", default=None, help="captions file (COCO json, Karpathy json, Flickr8k token "
                                                        "file, or csv/jsonl; with --format folder: default "
                                                        "IMAGES/captions.csv or IMAGES/captions.jsonl)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--out", required=True, help="model directory to write (best epoch; checkpoint.pt inside)")
    p.add_argument("--val-annotations", help="captions file of the validation images (same format)")
    p.add_argument("--val-images", help="image folder of --val-annotations (default: --images)")
    p.add_argument("--split-file", help="list of training image file names (e.g. Flickr_8k.trainImages.txt)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="held out when there is no validation set (default: about 50 images, 5%% to 20%%)")
    start = p.add_argument_group("where training starts")
    start.add_argument("--init-from", default=None, metavar="SRC",
                       help="fine-tune this model: a model folder (e.g. an imported tutorial model), "
                            "owner/name[@revision] on the Hub, or 'bundled' (default: the bundled model)")
    start.add_argument("--from-scratch", action="store_true",
                       help="train a new decoder and projection on the ImageNet backbone instead of fine-tuning")
    start.add_argument("--new-words", choices=("add", "report"), default=defaults.new_words,
                       help="fine-tuning: add the data's new words to the vocabulary (default) or only report them")
    start.add_argument("--keep-trained", action="store_true",
                       help="keep the best epoch even when the starting model scored higher before training")
    arch = p.add_argument_group("architecture of a new model (default: the starting model's; from scratch: "
                                "efficientnet-lite0 features, 256/512, 1 layer, 20 tokens)")
    arch.add_argument("--backbone", default=None,
                      help="efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, resnet152")
    arch.add_argument("--encoder-output", default=None, choices=ENCODER_OUTPUTS,
                      help="what the backbone hands the decoder: pooled features or class probabilities")
    arch.add_argument("--image-size", type=POSITIVE, default=None, help="input crop (default: the backbone's)")
    arch.add_argument("--embed-size", type=POSITIVE, default=None)
    arch.add_argument("--hidden-size", type=POSITIVE, default=None)
    arch.add_argument("--num-layers", type=POSITIVE, default=None)
    arch.add_argument("--max-length", type=POSITIVE, default=None, help="longest caption generated, in tokens")
    arch.add_argument("--min-word-count", type=POSITIVE, default=None,
                      help="vocabulary threshold (default: chosen to keep 97%% of the caption words; the tutorial: 4)")
    arch.add_argument("--train-backbone", action="store_true",
                      help="fine-tune the backbone too (no feature cache: every step runs the whole encoder)")
    steps = p.add_argument_group("steps")
    steps.add_argument("--epochs", type=POSITIVE, default=None,
                       help="train exactly this many epochs, without early stopping (with --resume: in all; "
                            "the tutorial: 5)")
    steps.add_argument("--max-epochs", type=POSITIVE, default=None,
                       help="with early stopping (the default): the most epochs (default 200)")
    steps.add_argument("--patience", type=POSITIVE, default=None,
                       help="stop after this many epochs without a better validation score "
                            "(default: about 2,000 steps, 3 to 10 epochs)")
    steps.add_argument("--batch-size", type=POSITIVE, default=None,
                       help="default: chosen from the data, at most 128 (the tutorial: 128)")
    steps.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (default and the tutorial: 0.001)")
    steps.add_argument("--warmup-steps", type=int, default=None,
                       help="linear warm-up of the learning rate (default: two epochs, at most 500; the tutorial: 0)")
    steps.add_argument("--lr-schedule", choices=("plateau", "constant"), default=defaults.lr_schedule,
                       help="plateau (default): halve the rate after half the patience without a better score; "
                            "constant (the tutorial)")
    steps.add_argument("--backbone-lr", type=float, default=None, help="with --train-backbone (default: lr / 10)")
    steps.add_argument("--seed", type=int, default=defaults.seed)
    steps.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    reg = p.add_argument_group("regularisation (defaults: measured by benchmarks/finetune.py, see docs/training.md)")
    reg.add_argument("--dropout", type=_share, default=None, help="on the decoder's inputs and LSTM outputs")
    reg.add_argument("--weight-decay", type=float, default=None, help="AdamW's decoupled weight decay")
    reg.add_argument("--label-smoothing", type=_share, default=None)
    reg.add_argument("--freeze-projection", action=argparse.BooleanOptionalAction, default=None,
                     help="keep the encoder's Linear + BatchNorm as they start")
    run = p.add_argument_group("validation and the machine")
    run.add_argument("--metric", default=str(defaults.metric),
                     help="validation metric choosing the best epoch: CIDEr (default), BLEU-1..4, ROUGE-L, or none "
                          "(validation loss)")
    run.add_argument("--metric-images", type=POSITIVE, default=defaults.metric_images,
                     help="validation images captioned per epoch")
    run.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                     help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with a gradient scaler)")
    run.add_argument("--compile", action="store_true", help="torch.compile the decoder's training step")
    run.add_argument("--workers", type=int, default=None,
                     help="DataLoader worker processes (default: 0 for cached features, up to 4 for images)")
    run.add_argument("--cache-dir", default=None, help="feature cache (default: features in the captioner's "
                                                       "cache: $CAPTIONER_CACHE, else $XDG_CACHE_HOME/captioner, "
                                                       "else ~/.cache/captioner)")
    run.add_argument("--extraction-batch-size", type=POSITIVE, default=defaults.extraction_batch_size)
    card = p.add_argument_group("model card")
    card.add_argument("--dataset-name", action="append", help="for the model card's datasets field (repeatable)")
    card.add_argument("--license", default=None,
                      help="the trained weights' licence for the model card, as a Hub licence id (e.g. cc-by-4.0, "
                           "mit, other); the data's terms decide it (default: unknown)")


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def run_evaluate(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("train", "pycocoevalcap", purpose="evaluate (BLEU, METEOR, ROUGE-L, CIDEr)")
    from captioner.core.inference import load_captioner
    from captioner.training.datasets import read_dataset, require_images
    from captioner.training.evaluate import decoding_name, evaluate_captioner
    from captioner.training.evaluation import format_scores

    split = args.split if args.split != "all" else None
    if args.split is None:
        split = None if args.format == "coco" else "test"
    annotations = Path(args.annotations) if args.annotations else None
    items, report = read_dataset(args.format, annotations, Path(args.images), split=split, split_file=args.split_file)
    require_images(items, report, Path(args.images))
    print(report.summary(), file=sys.stderr)
    if args.max_images:
        items = items[:args.max_images]
    beams = [args.beam_size] + ([1] if args.compare_greedy and args.beam_size != 1 else [])
    captioner = load_captioner(args.model, **load_settings(args))
    result = evaluate_captioner(captioner, items, beam_sizes=beams, batch_size=args.batch_size,
                                max_length=args.max_length, use_java=not args.no_java, options=args.decoding)
    for beam in beams:
        if len(beams) > 1:
            print(f"# {decoding_name(beam)} ({len(result.references)} images)")
        print(format_scores(result.decodings[decoding_name(beam)]))
    out = Path(args.json_out) if args.json_out else Path(
        f"eval-{Path(str(args.model or 'bundled')).name}-{report.annotations.stem}-{split or 'all'}.json")
    data = {"model": captioner.loaded.source,
            "data": {"format": args.format, "annotations": str(report.annotations), "image_folder": str(args.images),
                     "split": split, "report": report.summary()},
            **result.to_json()}
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unusable images (e.g. {result.skipped[0][0]}: {result.skipped[0][1]})",
              file=sys.stderr)
    print(f"wrote scores and per-image captions to {out}", file=sys.stderr)
    return 0


def add_evaluate(sub) -> None:
    from captioner.training.datasets import FORMATS

    p = command(sub, "evaluate", run_evaluate, parents=[MODEL, DECODING],
                help="score a model on a caption data set (BLEU, METEOR, ROUGE-L, CIDEr)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--annotations", default=None,
                   help="captions file (with --format folder: default IMAGES/captions.csv or captions.jsonl)")
    p.add_argument("--images", required=True)
    p.add_argument("--split", default=None, help="train, val, test or all (default: test; all for coco)")
    p.add_argument("--split-file", help="list of the image file names to score")
    p.add_argument("--compare-greedy", action="store_true", help="also score greedy decoding")
    p.add_argument("--max-images", type=POSITIVE, default=None, help="score only the first N images")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="images per forward pass (default 16)")
    p.add_argument("--no-java", action="store_true", help="skip Java (Python tokeniser, no METEOR)")
    p.add_argument("--json-out", help="per-image captions and the scores (default: "
                                      "eval-MODEL-ANNOTATIONS-SPLIT.json in the current folder)")
