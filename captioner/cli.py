"""The command line (python -m captioner): caption images, import tutorial checkpoints, train, evaluate, publish.

Heavy modules (torch, gradio) are imported inside the commands that need them, so that
``--help`` is instant and ``caption`` pays only for torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from captioner.core.errors import CaptionerError
from captioner.core.options import BACKEND_HELP, BACKENDS, PRECISION_HELP, PRECISIONS, DecodeOptions


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.core.inference import load_captioner

    options = DecodeOptions(beam_size=args.beam_size, num_candidates=args.num_candidates, max_length=args.max_length,
                            no_repeat_ngram=args.no_repeat_ngram)
    captioner = load_captioner(args.model, args.device, args.backend, args.precision)
    options.resolved(captioner.config.max_length)  # bad settings stop here, before any image is read
    with tqdm(total=len(args.images), desc="captioning", unit="img", file=sys.stderr,
              disable=len(args.images) <= args.batch_size) as bar:
        results = captioner(args.images, options, errors="return", batch_size=args.batch_size,
                            progress=lambda done, total: bar.update(done - bar.n))
    show_names = len(args.images) > 1
    overlays = _explain_results(captioner, results, args) if args.explain else {}
    for index, result in enumerate(results):
        if args.json:
            print(json.dumps({**result.to_dict(), **overlays.get(index, {})}, ensure_ascii=False))
        elif result.error is None:
            print(f"{result.image}: {result.caption}" if show_names else result.caption)
        if result.error is not None:
            print(f"error: {result.image}: {result.error}", file=sys.stderr)
    return 1 if any(result.error is not None for result in results) else 0


def cmd_import_legacy(args: argparse.Namespace) -> int:
    from captioner.core.repository.legacy import import_legacy

    if args.download:
        from captioner.core.repository.legacy_download import download_and_import

        urls = {name: value for name, value in (("model_zip_url", args.model_zip_url),
                                                ("vocab_zip_url", args.vocab_zip_url)) if value}
        out = download_and_import(args.out, **urls)
    else:
        missing = [flag for flag, value in (("--encoder", args.encoder), ("--decoder", args.decoder),
                                            ("--vocab", args.vocab)) if not value]
        if missing:
            raise CaptionerError(f"import-legacy needs {', '.join(missing)} (or --download)")
        out = import_legacy(args.encoder, args.decoder, args.vocab, args.out or "models/tutorial-coco")
    print(f"wrote {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from captioner.core.repository.publish import push_model

    url = push_model(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                     commit_message=args.message)
    print(url)
    return 0


def _add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption one or more images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", help="model directory or owner/name[@revision] (default: $CAPTIONER_MODEL, "
                                   "else the bundled model)")
    p.add_argument("--beam-size", type=_positive, default=3, help="1 = greedy (default 3)")
    p.add_argument("--num-candidates", type=_positive, default=None, help="how many captions to keep per image")
    p.add_argument("--no-repeat-ngram", type=int, default=DecodeOptions.no_repeat_ngram, metavar="N",
                   help=f"no n-gram of N words twice in a caption; 0 turns it off (default {DecodeOptions.no_repeat_ngram})")
    p.add_argument("--max-length", type=_positive, default=None, help="maximum tokens (default: the model's)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: $CAPTIONER_DEVICE or the best present)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--explain", metavar="DIR", default=None,
                   help="write each word's heatmap over the photo to DIR/NAME.NN-WORD.png (listed in --json)")
    p.set_defaults(func=cmd_caption)


def _add_import_legacy(sub) -> None:
    p = sub.add_parser("import-legacy", help="convert the PyTorch tutorial's .pkl checkpoints safely")
    p.add_argument("--encoder", help="encoder-5-3000.pkl")
    p.add_argument("--decoder", help="decoder-5-3000.pkl")
    p.add_argument("--vocab", help="vocab.pkl")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--download", action="store_true",
                   help="fetch the tutorial's published COCO model, check, convert and cache it")
    p.add_argument("--model-zip-url", default=None, help="where pretrained_model.zip is (with --download; default: the tutorial's link)")
    p.add_argument("--vocab-zip-url", default=None, help="where vocap.zip is (with --download; default: the tutorial's link)")
    p.set_defaults(func=cmd_import_legacy)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("onnx", "onnx", purpose="export-onnx")
    from captioner.core.backends.onnx_export import export_to_repo

    if not args.int8:
        if args.calibration or args.check:
            raise CaptionerError("--calibration and --check choose the photos of the int8 encoder: add --int8")
        paths = export_to_repo(args.model_dir)
    else:
        from captioner.core.backends.calibration import photo_sets
        from captioner.core.backends.int8 import export_int8_to_repo

        photos = photo_sets(args.calibration, args.check)  # a bad folder stops here, before any export work
        if photos is None:
            raise CaptionerError("--int8 needs photos: --calibration DIR (a folder of 100 or more photos like "
                                 "those the model will caption), or set CAPTIONER_CALIBRATION")
        paths, agreement = export_int8_to_repo(args.model_dir, photos,
                                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MB)")
    if args.int8:
        print(agreement.line())
    return 0


def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="write a model folder's ONNX export (onnx/), used by the onnx backend",
                       description="Export the model's backbone and decoder step to MODEL_DIR/onnx/encoder_model.onnx "
                                   "and MODEL_DIR/onnx/decoder_step.onnx (each written whole or not at all), "
                                   "recording the weights' SHA-256. The onnx backend then uses them instead of "
                                   "exporting, with onnxruntime alone; `push` publishes them with the model. "
                                   "--int8 adds MODEL_DIR/onnx/encoder_model_int8.onnx, calibrated on half of the "
                                   "--calibration photos and checked on the other half: `--precision auto` uses it "
                                   "only when at least 98% of their captions match the fp32 encoder's; the check "
                                   "goes into the model card. Needs: pip install \"captioner[onnx]\".")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local model folder")
    p.add_argument("--int8", action="store_true", help="also write the int8 encoder, checked against fp32")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="with --int8: a folder of photos like those the model will caption (default: "
                        "$CAPTIONER_CALIBRATION); half calibrate, half check, split by content")
    p.add_argument("--check", metavar="DIR", default=None,
                   help="with --int8: photos for the check instead (then all --calibration photos calibrate)")
    p.set_defaults(func=cmd_export_onnx)


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload a model directory to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=cmd_push)


def cmd_build_default(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("build", "timm", "skimage", "pycocoevalcap", purpose="build-default")
    from captioner.build.pipeline import BuildSettings, build_default, default_photos, summary
    from captioner.core.repository.storage import BUNDLED_MODEL_DIR

    out = args.out or BUNDLED_MODEL_DIR
    settings = BuildSettings(**{name: value for name, value in vars(args).items()
                                if name in BuildSettings.__dataclass_fields__ and value is not None})
    report = build_default(out, settings, default_photos())
    print(summary(report))
    print(f"wrote {out}")
    return 0


def _add_build_default(sub) -> None:
    p = sub.add_parser("build-default", help="regenerate the bundled model: generate data, train, evaluate, write")
    p.add_argument("--out", default=None, help="model directory to write (default: the bundled models/default)")
    for name, kind in (("train-pairs", int), ("val-pairs", int), ("test-pairs", int), ("epochs", int),
                       ("batch-size", int), ("lr", float), ("embed-size", int), ("hidden-size", int),
                       ("seed", int)):
        p.add_argument(f"--{name}", type=kind, dest=name.replace("-", "_"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--resume", action="store_true", help="continue the training run of an interrupted build")
    p.add_argument("--full-precision", dest="half_precision", action="store_false", default=None,
                   help="store float32 weights (default: float16 when captions stay identical)")
    p.set_defaults(func=cmd_build_default)


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("train", "pycocoevalcap", purpose="evaluate (BLEU, METEOR, ROUGE-L, CIDEr)")
    from captioner.core.inference import load_captioner
    from captioner.training.datasets import read_dataset, require_images
    from captioner.training.evaluation import format_scores
    from captioner.training.evaluate import decoding_name, evaluate_captioner

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
    captioner = load_captioner(args.model, args.device)
    result = evaluate_captioner(captioner, items, beam_sizes=beams, batch_size=args.batch_size,
                                max_length=args.max_length, use_java=not args.no_java)
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


def _add_train(sub) -> None:
    from captioner.core.model.config import ENCODER_OUTPUTS
    from captioner.training.config import PRECISIONS, TrainConfig
    from captioner.training.datasets import FORMATS

    defaults = TrainConfig()
    p = sub.add_parser("train", help="train a model on a caption data set (fine-tunes the bundled model by default)",
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
    arch.add_argument("--image-size", type=_positive, default=None, help="input crop (default: the backbone's)")
    arch.add_argument("--embed-size", type=_positive, default=None)
    arch.add_argument("--hidden-size", type=_positive, default=None)
    arch.add_argument("--num-layers", type=_positive, default=None)
    arch.add_argument("--max-length", type=_positive, default=None, help="longest caption generated, in tokens")
    arch.add_argument("--min-word-count", type=_positive, default=None,
                      help="vocabulary threshold (default: chosen to keep 97%% of the caption words; the tutorial: 4)")
    arch.add_argument("--train-backbone", action="store_true",
                      help="fine-tune the backbone too (no feature cache: every step runs the whole encoder)")
    steps = p.add_argument_group("steps")
    steps.add_argument("--epochs", type=_positive, default=None,
                       help="train exactly this many epochs, without early stopping (with --resume: in all; "
                            "the tutorial: 5)")
    steps.add_argument("--max-epochs", type=_positive, default=None,
                       help="with early stopping (the default): the most epochs (default 200)")
    steps.add_argument("--patience", type=_positive, default=None,
                       help="stop after this many epochs without a better validation score "
                            "(default: about 2,000 steps, 3 to 10 epochs)")
    steps.add_argument("--batch-size", type=_positive, default=None,
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
    run.add_argument("--metric-images", type=_positive, default=defaults.metric_images,
                     help="validation images captioned per epoch")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    run.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                     help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with a gradient scaler)")
    run.add_argument("--compile", action="store_true", help="torch.compile the decoder's training step")
    run.add_argument("--workers", type=int, default=None,
                     help="DataLoader worker processes (default: 0 for cached features, up to 4 for images)")
    run.add_argument("--cache-dir", default=None, help="feature cache (default: $CAPTIONER_CACHE/features or "
                                                       "~/.cache/captioner/features)")
    run.add_argument("--extraction-batch-size", type=_positive, default=defaults.extraction_batch_size)
    card = p.add_argument_group("model card")
    card.add_argument("--dataset-name", action="append", help="for the model card's datasets field (repeatable)")
    card.add_argument("--license", default=None,
                      help="the trained weights' licence for the model card, as a Hub licence id (e.g. cc-by-4.0, "
                           "mit, other); the data's terms decide it (default: unknown)")
    p.set_defaults(func=cmd_train)


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def _add_evaluate(sub) -> None:
    from captioner.training.datasets import FORMATS

    p = sub.add_parser("evaluate", help="score a model on a caption data set (BLEU, METEOR, ROUGE-L, CIDEr)")
    p.add_argument("--model", help="model directory or owner/name[@revision] (default: the bundled model)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--annotations", default=None,
                   help="captions file (with --format folder: default IMAGES/captions.csv or captions.jsonl)")
    p.add_argument("--images", required=True)
    p.add_argument("--split", default=None, help="train, val, test or all (default: test; all for coco)")
    p.add_argument("--split-file", help="list of the image file names to score")
    p.add_argument("--beam-size", type=_positive, default=3, help="1 = greedy (default 3)")
    p.add_argument("--compare-greedy", action="store_true", help="also score greedy decoding")
    p.add_argument("--max-length", type=_positive, default=None)
    p.add_argument("--max-images", type=_positive, default=None, help="score only the first N images")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--no-java", action="store_true", help="skip Java (Python tokeniser, no METEOR)")
    p.add_argument("--json-out", help="per-image captions and the scores (default: "
                                      "eval-MODEL-ANNOTATIONS-SPLIT.json in the current folder)")
    p.set_defaults(func=cmd_evaluate)


def cmd_deploy_space(args: argparse.Namespace) -> int:
    from captioner.serving.space import deploy, print_staged, stage_space

    if args.dry_run:
        staged = stage_space(args.dry_run, args.space_id, model=args.model, bundle_model=args.bundle_model,
                             hardware=args.hardware)
        print_staged(staged)
        print("dry run: nothing was uploaded")
        return 0
    _, url = deploy(args.space_id, model=args.model, bundle_model=args.bundle_model, hardware=args.hardware,
                    private=args.private, commit_message=args.message, progress=print_staged)
    print(url)
    return 0


def _add_deploy_space(sub) -> None:
    p = sub.add_parser("deploy-space", help="create or update a Hugging Face Space running the demo",
                       description="Stage the app for a Hugging Face Space (app.py, the package, requirements, "
                                   "examples, README front matter) and create or update the Space: files, the "
                                   "CAPTIONER_MODEL variable, hardware. The token comes from `hf auth login` or "
                                   "HF_TOKEN. Publish a model first with `push`, then name it with --model.")
    p.add_argument("space_id", metavar="OWNER/NAME", help="the Space to create or update")
    p.add_argument("--model", default=None, help="owner/name[@revision]: a Hub model the Space downloads at build "
                                                 "time; or a local model folder, uploaded with the Space")
    p.add_argument("--bundle-model", action="store_true",
                   help="upload the bundled model (models/default) with the Space; used when --model is not given")
    p.add_argument("--hardware", default="cpu-basic",
                   help="cpu-basic (default), zerogpu (= zero-a10g), or a GPU flavour such as t4-small")
    p.add_argument("--private", action="store_true", help="create the Space as private (an existing one keeps its "
                                                          "visibility)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="stage the Space into DIR (new or empty) and stop: nothing is uploaded")
    p.set_defaults(func=cmd_deploy_space)


def _explain_results(captioner, results, args: argparse.Namespace) -> dict[int, dict]:
    """Write the word heatmaps of every captioned image into ``args.explain``; per result index, the
    ``overlays`` entry ([{word, probability, path}]) its JSON line gets."""
    from tqdm import tqdm

    from captioner.core.explain.overlays import write_overlays

    done, stems = {}, set()
    captioned = [(i, r) for i, r in enumerate(results) if r.error is None]
    for index, result in tqdm(captioned, desc="explaining", unit="img", file=sys.stderr, disable=len(captioned) < 2):
        if not result.caption.split():  # an empty caption has no words to explain
            done[index] = {"overlays": []}
            continue
        explanation = captioner.explain(args.images[index], result.caption)
        stem = Path(args.images[index]).stem
        stem = stem if stem not in stems else f"{stem}-{index + 1}"  # two photos with one name
        stems.add(stem)
        paths = write_overlays(explanation, args.explain, stem)
        entries = [{"word": w.word, "probability": w.probability, "path": str(p)}
                   for w, p in zip(explanation.words, paths)]
        done[index] = {"overlays": entries}
    return done


def cmd_score(args: argparse.Namespace) -> int:
    from captioner.core.inference import load_captioner

    captioner = load_captioner(args.model, args.device)
    scores = captioner.score(args.image, args.caption)
    log_probability = sum(math.log(max(s.probability, 1e-300)) for s in scores)
    if args.json:
        print(json.dumps({"image": args.image, "caption": " ".join(s.word for s in scores[:-1]),
                          "words": [s.to_dict() for s in scores], "log_probability": log_probability,
                          "model": captioner.loaded.source}, ensure_ascii=False))
        return 0
    for s in scores:
        print(f"{s.word}\t{s.probability:.4f}" + ("" if s.known else "\t(not in the vocabulary: scored as <unk>)"))
    print(f"log-probability {log_probability:.4f} (mean per token {log_probability / len(scores):.4f})")
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="the probability the model gives each word of a caption for an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("caption", metavar="CAPTION", help='the caption to score, e.g. "a cat on a sofa"')
    p.add_argument("--model", help="model directory or owner/name[@revision] (default: $CAPTIONER_MODEL, "
                                   "else the bundled model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: $CAPTIONER_DEVICE or the best present)")
    p.add_argument("--json", action="store_true", help="one JSON object: words with probabilities, log_probability")
    p.set_defaults(func=cmd_score)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _above_zero(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def cmd_caption_dataset(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("ray", "ray.data", "pyarrow", purpose="caption-dataset (Ray Data)")
    from captioner.serving.ray_data import caption_dataset

    options = DecodeOptions(beam_size=args.beam_size, num_candidates=args.num_candidates, max_length=args.max_length)
    run = caption_dataset(args.source, args.out, address=args.address, workers=args.workers,
                          gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                          batch_size=args.batch_size, model=args.model, options=options, resume=args.resume,
                          path_column=args.path_column, fmt=args.format, rows_per_part=args.rows_per_part,
                          backend=args.backend, precision=args.precision)
    print(run.summary())
    return 0


def _add_caption_dataset(sub) -> None:
    p = sub.add_parser("caption-dataset", help="caption a whole collection on a Ray cluster (Ray Data)",
                       description="Caption every image of a folder (recursive), a glob pattern or a CSV / JSON "
                                   "Lines / Parquet table of paths, on a Ray cluster, into Parquet or JSON Lines "
                                   "parts in OUT: one row per input (path, caption, score, confidence, candidates, "
                                   "words, top_classes, model, error). Paths may be on any filesystem pyarrow "
                                   "knows (s3://, gs://, abfs://, hdfs://). Needs: pip install \"captioner[ray]\".")
    p.add_argument("source", metavar="SOURCE", help="folder, glob pattern, or table (.csv, .jsonl, .parquet)")
    p.add_argument("--out", required=True, help="output folder (its parts: part-*.parquet, or *.jsonl)")
    p.add_argument("--format", choices=("parquet", "jsonl"), default=None,
                   help="output format (default: jsonl when OUT ends in .jsonl, else parquet)")
    p.add_argument("--path-column", default="path", help="the table column holding image paths (default: path)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (ray://host:10001, or auto); default: start a local one")
    p.add_argument("--workers", type=_positive, default=None,
                   help="model workers, each loading the model once (default: the cluster's GPUs, else CPUs)")
    p.add_argument("--gpus-per-worker", type=_non_negative, default=None,
                   help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-worker", type=_above_zero, default=1.0, help="default: 1")
    p.add_argument("--batch-size", type=_positive, default=8, help="images per forward pass (default 8)")
    p.add_argument("--rows-per-part", type=_positive, default=1000, help="rows per output part file (default 1000)")
    p.add_argument("--model", help="model directory or owner/name[@revision] (default: $CAPTIONER_MODEL, "
                                   "else the bundled model); every worker must be able to load it")
    p.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP + "; for every worker")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP + "; for every worker")
    p.add_argument("--beam-size", type=_positive, default=3, help="1 = greedy (default 3)")
    p.add_argument("--num-candidates", type=_positive, default=None, help="how many captions to keep per image")
    p.add_argument("--max-length", type=_positive, default=None, help="maximum tokens (default: the model's)")
    p.add_argument("--resume", action="store_true", help="skip the inputs already in OUT (after a stopped job)")
    p.set_defaults(func=cmd_caption_dataset)


def cmd_serve(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("ray", "ray.serve", purpose="serve (Ray Serve)")
    import time

    import ray
    from ray import serve

    from captioner.serving.ray_serve import build_app

    own_cluster = not ray.is_initialized()
    if own_cluster:
        ray.init(address=args.address, **({} if args.address else {"include_dashboard": False}))
    try:
        settings = {name: getattr(args, name) for name in (
            "model", "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica",
            "max_batch_size", "batch_wait_ms", "max_upload_mb", "backend", "precision")
            if getattr(args, name) is not None}
        application = build_app(settings, ui=not args.no_ui)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application, name="captioner", route_prefix="/")
        print(f"serving on http://{args.host}:{args.port}/ (POST /v1/caption, GET /healthz"
              f"{'' if args.no_ui else ', the web UI at /'}); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete("captioner")
    finally:
        if own_cluster:
            ray.shutdown()
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve captions over HTTP on Ray Serve (REST API and the web UI)",
                       description="Run the caption service on Ray Serve: POST /v1/caption (an image as the body "
                                   "or a multipart field 'image'; decoding settings as query parameters), "
                                   "GET /healthz, and the Gradio app at /. Needs: pip install \"captioner[ray]\".")
    p.add_argument("--model", help="model directory or owner/name[@revision] (default: $CAPTIONER_MODEL, "
                                   "else the bundled model)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (ray://host:10001, or auto); default: start a local one")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_positive, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=_positive, default=None, help="a fixed number of replicas (default 1)")
    p.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas")
    p.add_argument("--max-replicas", type=_positive, default=None, help="autoscaling: most replicas")
    p.add_argument("--gpus-per-replica", type=_non_negative, default=None,
                   help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-replica", type=_above_zero, default=None, help="default: 1")
    p.add_argument("--max-batch-size", type=_positive, default=None,
                   help="concurrent requests per forward pass (default 8)")
    p.add_argument("--batch-wait-ms", type=_non_negative, default=None,
                   help="how long a request waits for others to share its pass (default 10)")
    p.add_argument("--max-upload-mb", type=_above_zero, default=None, help="largest image accepted (default 50)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP + "; for every replica")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP + "; for every replica")
    p.add_argument("--no-ui", action="store_true", help="the REST API only, without the Gradio app at /")
    p.set_defaults(func=cmd_serve)


PARSERS: list[Callable] = [_add_caption, _add_score, _add_import_legacy, _add_export_onnx, _add_push,
                           _add_build_default, _add_train, _add_evaluate, _add_caption_dataset, _add_serve,
                           _add_deploy_space]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captioner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CaptionerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
