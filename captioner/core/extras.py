"""Optional parts (pyproject extras): a missing one is named in one line before any work starts."""

from __future__ import annotations

import importlib

from captioner.core.errors import CaptionerError


class MissingExtraError(CaptionerError):
    """An optional dependency that a command needs is not installed."""


def require_extra(extra: str, *modules: str, purpose: str) -> None:
    """Raise ``MissingExtraError`` naming ``extra`` unless every module in ``modules`` imports."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({', '.join(missing)} is not installed): "
                                f"pip install 'captioner[{extra}]'")
