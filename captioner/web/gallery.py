"""The example gallery: whatever photos are in a folder (``examples/``), in a stable order."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.core.files import IMAGE_SUFFIXES

MAX_EXAMPLES = 100


def list_examples(folder: str | os.PathLike, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Image files directly in ``folder`` (not hidden), sorted by name; [] when the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    photos = [path for path in folder.iterdir()
              if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")]
    return sorted(photos, key=lambda path: path.name.lower())[:limit]

