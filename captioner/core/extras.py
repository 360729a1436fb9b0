"""Optional parts (pyproject extras): the one way to ask whether one is installed, and to say which to install.

``installed`` finds a module without importing it (cheap, and safe for heavy packages);
``require_extra`` stops a command before any work with one line naming the extra.
"""

from __future__ import annotations

import importlib.util

from captioner.core.errors import CaptionerError


class MissingExtraError(CaptionerError):
    """An optional dependency that a command needs is not installed."""


def installed(module: str) -> bool:
    """Whether ``module`` (dotted names too) can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module blocked in sys.modules
        return False


def install_hint(extra: str, what: str, missing: list[str] | tuple[str, ...] = ()) -> str:
    """One line: ``what`` needs the ``extra`` extra (naming the ``missing`` modules) and how to install it."""
    names = f" ({', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed)" if missing else ""
    return f"{what} needs the '{extra}' extra{names}: pip install 'captioner[{extra}]'"


def require_extra(extra: str, *modules: str, purpose: str) -> None:
    """Raise ``MissingExtraError`` naming ``extra`` unless every module in ``modules`` is installed."""
    missing = [module for module in modules if not installed(module)]
    if missing:
        raise MissingExtraError(install_hint(extra, purpose, missing))
