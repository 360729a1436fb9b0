"""Training and evaluation: ``train`` (a model from a caption data set) and ``evaluate`` (BLEU, METEOR,
ROUGE-L, CIDEr of a model on one)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.cli.arguments import DECODING, DEVICE, MODEL, POSITIVE, command, load_settings


def run_train(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    if args.metric.lower() != "none":
        require_extra("train", "pycocoevalcap", purpose=f"training with the {args.metric} validation metric")
    from captioner.training.loop import CardInfo, train_captioner
    from captioner.training.plan import check_dependencies

    metric = None if args.metric.lower() == "none" else args.metric
    check_dependencies(metric)  # before the data is read or an image encoded
    train_items, val_items, reports, how = _training_data(args)
    for report in reports:
        print(report.summary())
    print(f"Training on {len(train_items)} images; validating on {len(val_items)} ({how}).", flush=True)
    names = tuple(args.dataset_name or [Path(args.annotations).stem])
    data = (f"{args.format} data from `{Path(args.annotations).name}`: {len(train_items)} training images with "
            f"{sum(len(i.captions) for i in train_items)} captions; validation on {len(val_items)} images ({how}).")
    result = train_captioner(
        train_items, val_items, args.out, backbone=args.backbone, encoder_output=args.encoder_output,
        epochs=args.epochs, max_epochs=args.max_epochs, patience=args.patience, warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule, batch_size=args.batch_size, lr=args.lr, seed=args.seed, resume=args.resume,
        min_word_count=args.min_word_count, embed_size=args.embed_size, hidden_size=args.hidden_size,
        num_layers=args.num_layers, max_length=args.max_length, image_size=args.image_size,
        train_backbone=args.train_backbone, backbone_lr=args.backbone_lr, device=args.device,
        cache_dir=args.cache_dir, extraction_batch_size=args.extraction_batch_size,
        metric=metric, metric_images=args.metric_images, init_from=args.init_from, new_words=args.new_words,
        precision=args.precision, compile=args.compile, workers=args.workers,
        card=CardInfo(data=data, datasets=names, license=args.license),
        report=lambda line: print(line, flush=True))
    best = result.best
    if best is None and any(e.epoch > 0 for e in result.history):
        print("error: no epoch's validation captions ended properly (at least 90% must reach <end> within "
              "--max-length), so no model was written; train longer (--resume with more epochs) or raise "
              "--max-length", file=sys.stderr)
        return 1
    if best is None:
        done = result.history[-1].epoch if result.history else 0
        print(f"nothing to do: {args.out} already has {done} epochs"
              + ("" if result.stopped_early else " (raise --epochs or --max-epochs to train more)"))
        return 0
    scores = ", ".join(f"{name} {value:.4f}" for name, value in best.scores.items() if value is not None)
    print(f"best epoch {best.epoch} of {result.history[-1].epoch}"
          f"{' (stopped early: no better score for the patience allowed)' if result.stopped_early else ''}: "
          f"val loss {best.val_loss:.4f}{', ' + scores if scores else ''}")
    if result.skipped_images:
        print(f"skipped {len(result.skipped_images)} unusable images (e.g. {result.skipped_images[0][0]}: "
              f"{result.skipped_images[0][1]})")
    print(f"wrote {args.out} (training.png: the losses and {metric or 'validation loss'} per epoch)")
    return 0


def _training_data(args: argparse.Namespace):
    """(train items, validation items, reports, how the validation set was chosen)."""
    from captioner.core.errors import DatasetError
    from captioner.training.datasets import read_dataset, split_holdout

    fmt, annotations, images = args.format, Path(args.annotations), Path(args.images)
    if fmt == "flickr8k" and args.split_file is None:
        try:  # the standard split lists next to the token file
            items, report = read_dataset(fmt, annotations, images, split="train")
        except DatasetError:
            items, report = read_dataset(fmt, annotations, images)
    else:
        items, report = read_dataset(fmt, annotations, images, split_file=args.split_file)
    reports = [report]
    train = [i for i in items if i.split in (None, "train")]
    val = [i for i in items if i.split == "val"]
    how = "the data's own validation split"
    if args.val_annotations:
        val, val_report = read_dataset(fmt, Path(args.val_annotations), Path(args.val_images or images))
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
        train, val = split_holdout(train, args.val_fraction, args.seed)
        how = f"a held-out {args.val_fraction:g} of the training images"
    if not train:
        raise DatasetError("no training images left: check the data's split labels")
    return train, val, reports, how


def add_train(sub) -> None:
    from captioner.core.model.config import ENCODER_OUTPUTS
    from captioner.training.datasets import FORMATS

    p = command(sub, "train", run_train, parents=[DEVICE], help="train a model on a caption data set",
                description="Train a Show-and-Tell model. Validation images: --val-annotations, else the "
                            "data's own val split (karpathy, flickr8k lists, a csv split column), else a "
                            "held-out --val-fraction of the training images. Unset settings are chosen "
                            "from the data and reported. The tutorial's settings: --epochs 5 --batch-size "
                            "128 --min-word-count 4 --lr 0.001 --warmup-steps 0 --lr-schedule constant.")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--annotations", required=True, help="captions file (COCO json, Karpathy json, Flickr8k "
                                                        "token file, or csv/jsonl)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--out", required=True, help="model directory to write (best epoch; checkpoint.pt inside)")
    p.add_argument("--val-annotations", help="captions file of the validation images (same format)")
    p.add_argument("--val-images", help="image folder of --val-annotations (default: --images)")
    p.add_argument("--split-file", help="list of training image file names (e.g. Flickr_8k.trainImages.txt)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held out when there is no validation set")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="efficientnet-lite0 (default), efficientnet-lite1, efficientnet-lite2, resnet152")
    p.add_argument("--encoder-output", default="features", choices=ENCODER_OUTPUTS,
                   help="what the backbone hands the decoder (default: pooled features)")
    p.add_argument("--image-size", type=POSITIVE, default=None, help="input crop (default: the backbone's)")
    p.add_argument("--epochs", type=POSITIVE, default=None,
                   help="train exactly this many epochs, without early stopping (with --resume: in all; "
                        "the tutorial: 5)")
    p.add_argument("--max-epochs", type=POSITIVE, default=None,
                   help="with early stopping (the default): the most epochs (default 200)")
    p.add_argument("--patience", type=POSITIVE, default=None,
                   help="stop after this many epochs without a better validation score "
                        "(default: about 2,000 steps, 3 to 10 epochs)")
    p.add_argument("--batch-size", type=POSITIVE, default=None,
                   help="default: chosen from the data, at most 128 (the tutorial: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default and the tutorial: 0.001)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up of the learning rate (default: two epochs, at most 500; the tutorial: 0)")
    p.add_argument("--lr-schedule", choices=("plateau", "constant"), default="plateau",
                   help="plateau (default): halve the rate after half the patience without a better score; "
                        "constant (the tutorial)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--min-word-count", type=POSITIVE, default=None,
                   help="vocabulary threshold (default: chosen to keep 97%% of the caption words; the tutorial: 4)")
    p.add_argument("--init-from", default=None, metavar="SRC",
                   help="start from a trained model: a model folder (e.g. an imported tutorial model), "
                        "owner/name[@revision] on the Hub, or 'bundled'")
    p.add_argument("--new-words", choices=("add", "report"), default="add",
                   help="with --init-from: add the data's new words to the vocabulary (default) or only report them")
    p.add_argument("--embed-size", type=POSITIVE, default=256)
    p.add_argument("--hidden-size", type=POSITIVE, default=512)
    p.add_argument("--num-layers", type=POSITIVE, default=1)
    p.add_argument("--max-length", type=POSITIVE, default=20, help="longest caption generated, in tokens")
    p.add_argument("--train-backbone", action="store_true",
                   help="fine-tune the backbone too (no feature cache: every step runs the whole encoder)")
    p.add_argument("--backbone-lr", type=float, default=None, help="with --train-backbone (default: lr / 10)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: features in the captioner's cache: "
                                                     "$CAPTIONER_CACHE, else $XDG_CACHE_HOME/captioner, else "
                                                     "~/.cache/captioner)")
    p.add_argument("--extraction-batch-size", type=POSITIVE, default=32)
    p.add_argument("--metric", default="CIDEr", help="validation metric choosing the best epoch: CIDEr (default), "
                                                     "BLEU-1..4, ROUGE-L, or none (validation loss)")
    p.add_argument("--metric-images", type=POSITIVE, default=500, help="validation images captioned per epoch")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with a gradient scaler)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder's training step")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: 0 for cached features, up to 4 for images)")
    p.add_argument("--dataset-name", action="append", help="for the model card's datasets field (repeatable)")
    p.add_argument("--license", default="apache-2.0", help="for the model card")


def run_evaluate(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("train", "pycocoevalcap", purpose="evaluate (BLEU, METEOR, ROUGE-L, CIDEr)")
    from captioner.core.inference import load_captioner
    from captioner.training.datasets import read_dataset
    from captioner.training.evaluation import format_scores
    from captioner.training.loop import decoding_name, evaluate_captioner

    split = args.split if args.split != "all" else None
    if args.split is None:
        split = None if args.format == "coco" else "test"
    items, report = read_dataset(args.format, Path(args.annotations), Path(args.images), split=split,
                                 split_file=args.split_file)
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
        f"eval-{Path(str(args.model or 'bundled')).name}-{Path(args.annotations).stem}-{split or 'all'}.json")
    data = {"model": captioner.loaded.source,
            "data": {"format": args.format, "annotations": str(args.annotations), "image_folder": str(args.images),
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
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--split", default=None, help="train, val, test or all (default: test; all for coco)")
    p.add_argument("--split-file", help="list of the image file names to score")
    p.add_argument("--compare-greedy", action="store_true", help="also score greedy decoding")
    p.add_argument("--max-images", type=POSITIVE, default=None, help="score only the first N images")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="images per forward pass (default 16)")
    p.add_argument("--no-java", action="store_true", help="skip Java (Python tokeniser, no METEOR)")
    p.add_argument("--json-out", help="per-image captions and the scores (default: "
                                      "eval-MODEL-ANNOTATIONS-SPLIT.json in the current folder)")
