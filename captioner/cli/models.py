"""Model files: ``import-legacy`` (the tutorial's checkpoints), ``export-onnx``, ``push`` (to the Hub) and
``build-default`` (the bundled model; the one command that imports the build pipeline)."""

from __future__ import annotations

import argparse
import sys

from captioner.cli.arguments import DEVICE, command
from captioner.core.errors import CaptionerError


def run_import_legacy(args: argparse.Namespace) -> int:
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


def add_import_legacy(sub) -> None:
    p = command(sub, "import-legacy", run_import_legacy,
                help="convert the PyTorch tutorial's .pkl checkpoints safely")
    p.add_argument("--encoder", help="encoder-5-3000.pkl")
    p.add_argument("--decoder", help="decoder-5-3000.pkl")
    p.add_argument("--vocab", help="vocab.pkl")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--download", action="store_true",
                   help="fetch the tutorial's published COCO model, check, convert and cache it")
    p.add_argument("--model-zip-url", default=None,
                   help="where pretrained_model.zip is (with --download; default: the tutorial's link)")
    p.add_argument("--vocab-zip-url", default=None,
                   help="where vocap.zip is (with --download; default: the tutorial's link)")


def run_export_onnx(args: argparse.Namespace) -> int:
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


def add_export_onnx(sub) -> None:
    p = command(sub, "export-onnx", run_export_onnx,
                help="write a model folder's ONNX export (onnx/), used by the onnx backend",
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


def run_push(args: argparse.Namespace) -> int:
    from captioner.core.repository.publish import push_model

    url = push_model(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
                     commit_message=args.message)
    print(url)
    return 0


def add_push(sub) -> None:
    p = command(sub, "push", run_push, help="upload a model directory to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--message", default=None, help="commit message")


def run_build_default(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("build", "timm", "skimage", "pycocoevalcap", purpose="build-default")
    from captioner.build.pipeline import BuildSettings, build_default, default_photos, summary
    from captioner.core.repository.storage import BUNDLED_MODEL_DIR

    out = args.out or BUNDLED_MODEL_DIR
    settings = BuildSettings(**{name: value for name, value in vars(args).items()
                                if name in BuildSettings.__dataclass_fields__ and value is not None})
    report = build_default(out, settings, default_photos())
    print(summary(report))
    if args.photos:
        from pathlib import Path

        from captioner.build.confidence import calibrate

        calibrate(Path(out), Path(args.photos), progress=lambda text: print(text, file=sys.stderr))
        print(f"confidence calibrated on the real-photo set {args.photos} (the model card's Confidence section)")
    else:
        print("confidence not calibrated (calibrated: false) until: python -m captioner.build.confidence PHOTOS "
              "--model OUT, with a real-photo set from python -m captioner.build.photos")
    print(f"wrote {out}")
    return 0


def add_build_default(sub) -> None:
    p = command(sub, "build-default", run_build_default, parents=[DEVICE],
                help="regenerate the bundled model: generate data, train, evaluate, write")
    p.add_argument("--out", default=None, help="model directory to write (default: the bundled models/default)")
    for name, kind in (("train-pairs", int), ("val-pairs", int), ("test-pairs", int), ("epochs", int),
                       ("batch-size", int), ("lr", float), ("embed-size", int), ("hidden-size", int),
                       ("seed", int)):
        p.add_argument(f"--{name}", type=kind, dest=name.replace("-", "_"), default=None)
    p.add_argument("--resume", action="store_true", help="continue the training run of an interrupted build")
    p.add_argument("--full-precision", dest="half_precision", action="store_false", default=None,
                   help="store float32 weights (default: float16 when captions stay identical)")
    p.add_argument("--photos", default=None, metavar="DIR",
                   help="a real-photo set (python -m captioner.build.photos DIR) to calibrate the confidence on")
