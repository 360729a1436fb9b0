"""Where the captioner keeps its caches: one rule for every cache (ONNX exports, features, imported models).

``$CAPTIONER_CACHE``, else ``$XDG_CACHE_HOME/captioner``, else ``~/.cache/captioner``. A leading
``~`` is expanded in either variable, and an empty or relative ``XDG_CACHE_HOME`` is ignored, as the
XDG Base Directory specification says (a relative cache folder would move with the working folder).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The folder all of the captioner's caches live in (not created here)."""
    own = os.environ.get("CAPTIONER_CACHE", "").strip()
    if own:
        return Path(own).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", "").strip()).expanduser()
    base = xdg if xdg.is_absolute() else Path.home() / ".cache"
    return base / "captioner"


def cache_dir(name: str) -> Path:
    """The cache folder for one kind of entry: ``cache_root() / name``."""
    return cache_root() / name
