"""``python -m captioner``: caption images, import tutorial checkpoints, train, evaluate, publish.

Heavy modules (torch, gradio) are imported inside the commands that need them, so that
``--help`` is instant and ``caption`` pays only for torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import CaptionerError

MODEL_ZIP_URL = "https://www.dropbox.com/s/ne0ixz5d58ccbbz/pretrained_model.zip?dl=1"  # the tutorial's links
VOCAB_ZIP_URL = "https://www.dropbox.com/s/26adb7y9m98uisa/vocap.zip?dl=1"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import ImageError
    from .service import load_captioner

    captioner = load_captioner(args.model, args.device)
    failures = 0
    show_names = len(args.images) > 1
    for start in tqdm(range(0, len(args.images), args.batch_size), desc="captioning", unit="batch",
                      disable=len(args.images) <= args.batch_size, file=sys.stderr):
        names = args.images[start:start + args.batch_size]
        try:  # one batched forward; on a bad image fall back to one by one to name it
            results = captioner.caption(names, beam_size=args.beam_size, max_length=args.max_length,
                                        num_candidates=args.num_candidates)
        except ImageError:
            results = []
            for name in names:
                try:
                    results.append(captioner.caption(name, beam_size=args.beam_size, max_length=args.max_length,
                                                     num_candidates=args.num_candidates))
                except ImageError as error:
                    results.append(error)
        for name, result in zip(names, results):
            if isinstance(result, Exception):
                failures += 1
                if args.json:
                    print(json.dumps({"image": name, "error": str(result), "model": captioner.loaded.source}))
                print(f"error: {name}: {result}", file=sys.stderr)
            elif args.json:
                print(json.dumps({"image": name, **result.to_dict()}, ensure_ascii=False))
            else:
                print(f"{name}: {result.caption}" if show_names else result.caption)
    return 1 if failures else 0


def cmd_import_legacy(args: argparse.Namespace) -> int:
    from .legacy import import_legacy

    if args.download:
        from .legacy_download import download_and_import

        out = download_and_import(args.out, model_zip_url=args.model_zip_url, vocab_zip_url=args.vocab_zip_url)
    else:
        missing = [flag for flag, value in (("--encoder", args.encoder), ("--decoder", args.decoder),
                                            ("--vocab", args.vocab)) if not value]
        if missing:
            raise CaptionerError(f"import-legacy needs {', '.join(missing)} (or --download)")
        out = import_legacy(args.encoder, args.decoder, args.vocab, args.out or "models/tutorial-coco")
    print(f"wrote {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .repository import push_model

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
    p.add_argument("--max-length", type=_positive, default=None, help="maximum tokens (default: the model's)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: $CAPTIONER_DEVICE or the best present)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_caption)


def _add_import_legacy(sub) -> None:
    p = sub.add_parser("import-legacy", help="convert the PyTorch tutorial's .pkl checkpoints safely")
    p.add_argument("--encoder", help="encoder-5-3000.pkl")
    p.add_argument("--decoder", help="decoder-5-3000.pkl")
    p.add_argument("--vocab", help="vocab.pkl")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--download", action="store_true",
                   help="fetch the tutorial's published COCO model, check, convert and cache it")
    p.add_argument("--model-zip-url", default=MODEL_ZIP_URL, help="where pretrained_model.zip is (with --download)")
    p.add_argument("--vocab-zip-url", default=VOCAB_ZIP_URL, help="where vocap.zip is (with --download)")
    p.set_defaults(func=cmd_import_legacy)


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload a model directory to the Hugging Face Hub")
    p.add_argument("model_dir")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=cmd_push)


PARSERS: list[Callable] = [_add_caption, _add_import_legacy, _add_push]


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
