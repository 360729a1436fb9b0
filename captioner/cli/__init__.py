"""The command line (python -m captioner): caption images, import tutorial checkpoints, train, evaluate, publish.

Each command is a module here (``caption``, ``models``, ``training``, ``scale``) with an ``add_*``
function that declares it; shared flags come from ``arguments``. Heavy modules (torch, gradio, ray)
are imported inside the commands that need them, so that ``--help`` is instant and ``caption`` pays
only for torch. Every setting is checked before any model loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from captioner.cli import caption, models, scale, training
from captioner.cli.arguments import CANDIDATE_FLAGS, DECODING_FLAGS, decode_options
from captioner.core.errors import CaptionerError

COMMANDS = [caption.add_caption, caption.add_score, models.add_import_legacy, models.add_export_onnx,
            models.add_push, models.add_build_default, training.add_train, training.add_evaluate,
            scale.add_caption_dataset, scale.add_serve, scale.add_deploy_space]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captioner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (2: the arguments were refused, with the command's usage)."""
    args = build_parser().parse_args(argv)
    try:
        args.decoding = decode_options(args)
        if args.command_check is not None:
            args.command_check(args)
    except (ValueError, CaptionerError) as error:
        args.command_parser.error(_flag_names(str(error)))
    try:
        return args.command_run(args)
    except (CaptionerError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _flag_names(message: str) -> str:
    """``message`` with decoding settings named as their flags (``beam_size`` -> ``--beam-size``)."""
    for names, _ in DECODING_FLAGS + CANDIDATE_FLAGS:
        message = message.replace(names[0][2:].replace("-", "_"), names[0])
    return message
