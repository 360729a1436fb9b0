"""Where the app's weights came from and what it runs on, in words for the app's Model tab."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.core.repository.hub import parse_hub_id
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.web.zerogpu import is_zero_gpu, space_id


def hub_snapshot(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(owner/name, commit)`` when ``path`` is a snapshot folder of huggingface_hub's cache
    (``.../models--owner--name/snapshots/<commit>``), else None."""
    path = Path(path)
    repo_folder = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo_folder.startswith("models--") or "--" not in repo_folder[8:]:
        return None
    owner, name = repo_folder[len("models--"):].split("--", 1)
    return f"{owner}/{name}", path.name


def weights_origin(source: str | os.PathLike | None, path: str | os.PathLike,
                   bundled: str | os.PathLike = BUNDLED_MODEL_DIR) -> str:
    """One Markdown line: the bundled model, a Hub repo with the revision asked for and the commit
    the files came from, or a local folder. ``source`` is what was asked for, ``path`` where the
    files were read."""
    path = Path(path)
    if path.resolve() == Path(bundled).resolve():
        return "bundled with the app (`models/default`)"
    snapshot = hub_snapshot(path)
    if snapshot is not None:
        repo, commit = snapshot
        hub_id = parse_hub_id(str(source or ""))
        revision = hub_id[1] if hub_id and hub_id[1] else "main"
        return f"Hugging Face Hub model `{repo}`, revision `{revision}` (commit `{commit[:12]}`)"
    return f"local folder `{path}`"


def hardware_summary(device: str) -> str:
    """One Markdown line: the device, whether this is ZeroGPU, and the Space's name on a Space."""
    if is_zero_gpu():
        where = "ZeroGPU: a GPU is attached for each forward pass"
    elif device.startswith("cuda"):
        import torch

        where = f"GPU ({torch.cuda.get_device_name(torch.device(device))})"
    else:
        where = f"{device.upper() if device == 'cpu' else device}"
    space = space_id()
    return f"{where}{f', on the Hugging Face Space `{space}`' if space else ''}"
