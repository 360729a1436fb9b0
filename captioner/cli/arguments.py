"""What the commands share: argument types whose messages say what is expected, and the parent parsers
that give every command the same flag with the same help text.

A flag of every command that loads a model goes in ``SOURCE_FLAGS`` (or ``DEVICE_FLAGS`` when it only
makes sense on this machine); a decoding setting goes in ``DECODING_FLAGS``, with the name of its
``DecodeOptions`` field as its destination. One line each: every command with that parent gets it, and
``load_settings`` / ``decode_options`` hand its value on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from captioner.core.options import (
    BACKEND_HELP,
    BACKENDS,
    MAX_BEAM_SIZE,
    MAX_LENGTH_RANGE,
    MAX_NO_REPEAT_NGRAM,
    PRECISION_HELP,
    PRECISIONS,
    WHEN_UNSURE,
    WHEN_UNSURE_HELP,
    DecodeOptions,
)

Flag = tuple[tuple[str, ...], dict[str, Any]]


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``)."""
    allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = allowed
    return parse


def number(low: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a number of at least ``low`` (above it, when not ``inclusive``)."""
    allowed = f"a number {'of at least' if inclusive else 'above'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if not (value >= low if inclusive else value > low):  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = allowed
    return parse


POSITIVE = whole_number(1)

SOURCE_FLAGS: list[Flag] = [
    (("--model",), {"metavar": "SRC", "help": "model directory or owner/name[@revision] on the Hugging Face Hub "
                                              "(default: $CAPTIONER_MODEL, else the bundled model)"}),
    (("--backend",), {"choices": BACKENDS, "help": BACKEND_HELP}),
    (("--precision",), {"choices": PRECISIONS, "help": PRECISION_HELP}),
]
DEVICE_FLAGS: list[Flag] = [
    (("--device",), {"help": "cpu, cuda, cuda:N or mps (default: $CAPTIONER_DEVICE, else the first of cuda, mps "
                             "and cpu that is present)"}),
]
DECODING_FLAGS: list[Flag] = [
    (("--beam-size",), {"type": whole_number(1, MAX_BEAM_SIZE), "default": DecodeOptions.beam_size, "metavar": "K",
                        "help": f"captions kept at each step; 1 = greedy (default {DecodeOptions.beam_size})"}),
    (("--max-length",), {"type": whole_number(*MAX_LENGTH_RANGE), "metavar": "N",
                         "help": "longest caption, in tokens (default: the model's)"}),
    (("--no-repeat-ngram",), {"type": whole_number(0, MAX_NO_REPEAT_NGRAM), "default": DecodeOptions.no_repeat_ngram,
                              "metavar": "N", "help": "no n-gram of N words twice in a caption; 0 turns it off "
                                                      f"(default {DecodeOptions.no_repeat_ngram})"}),
    (("--when-unsure",), {"choices": WHEN_UNSURE, "default": DecodeOptions.when_unsure, "help": WHEN_UNSURE_HELP}),
]
CANDIDATE_FLAGS: list[Flag] = [
    (("--num-candidates",), {"type": whole_number(1, MAX_BEAM_SIZE), "metavar": "N",
                             "help": "captions to keep per image, at most --beam-size (default: --beam-size)"}),
]


def parent(*flags: list[Flag]) -> argparse.ArgumentParser:
    """A parent parser (``add_parser(..., parents=[...])``) holding ``flags``."""
    parser = argparse.ArgumentParser(add_help=False)
    for group in flags:
        for names, options in group:
            parser.add_argument(*names, **options)
    return parser


SOURCE = parent(SOURCE_FLAGS)  # commands that load a model on many machines (Ray): each picks its device
DEVICE = parent(DEVICE_FLAGS)  # commands that train on this machine
MODEL = parent(SOURCE_FLAGS, DEVICE_FLAGS)  # commands that load a model on this machine
DECODING = parent(DECODING_FLAGS)
CANDIDATES = parent(CANDIDATE_FLAGS)


RESERVED = ("command_run", "command_check", "command_parser", "decoding")  # set on every command's arguments


def command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], *,
            check: Callable[[argparse.Namespace], None] | None = None, **options: Any) -> argparse.ArgumentParser:
    """Declare command ``name``: ``func(args)`` runs it and returns the exit status; ``check(args)`` runs
    before it and refuses bad arguments (``ValueError``) with the command's usage, before any work.
    ``args.decoding`` is the command's ``decode_options``. No flag may use a name in ``RESERVED``."""
    parser = sub.add_parser(name, **options)
    parser.set_defaults(command_run=func, command_check=check, command_parser=parser)
    return parser


def _dest(names: tuple[str, ...]) -> str:
    return names[0].lstrip("-").replace("-", "_")


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``load_captioner``'s keywords from the model flags the command has (``device``, ``backend``, ...)."""
    names = [_dest(names) for names, _ in SOURCE_FLAGS + DEVICE_FLAGS if _dest(names) != "model"]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def decode_options(args: argparse.Namespace) -> DecodeOptions | None:
    """The decoding flags the command has, as ``DecodeOptions`` with every setting checked (``ValueError``
    names a bad one, e.g. more candidates than the beam keeps), so that nothing waits for a model to
    load to be refused; None for a command without decoding flags."""
    if not hasattr(args, "beam_size"):  # the mark of the DECODING parent
        return None
    values = {_dest(names): getattr(args, _dest(names)) for names, _ in DECODING_FLAGS + CANDIDATE_FLAGS
              if hasattr(args, _dest(names))}
    options = DecodeOptions(**values)
    options.resolved(MAX_LENGTH_RANGE[1])  # a model's own length is in range: what was given is checked here
    return options
