"""Publishing a model repository on the Hugging Face Hub (``python -m captioner push``)."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.core.backends.onnx_export import SHIPPED_FILES, verify_shipped
from captioner.core.errors import ModelSourceError
from captioner.core.repository.hub import hub_reason
from captioner.core.repository.storage import CARD_FILES, MODEL_FILES, OPTIONAL_MODEL_FILES, load_model


def push_model(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
               revision: str | None = None, commit_message: str | None = None) -> str:
    """Check that ``model_dir`` loads, then upload its model files to the Hub; returns the commit URL.

    The folder's ONNX export (``onnx/encoder_model.onnx``, ``onnx/decoder_step.onnx``) goes too, after
    checking that it was exported from these weights (``ShippedExportError`` otherwise, and nothing
    is uploaded); an export file the folder does not have is deleted from the repository, since one
    left there from earlier weights would not be used."""
    from huggingface_hub import create_repo, upload_folder

    model_dir = Path(model_dir)
    loaded = load_model(model_dir)  # refuse to publish something that does not load
    export = [graph.as_posix() for graph in verify_shipped(loaded)]
    stale = [name for name in SHIPPED_FILES if name not in export]
    try:
        create_repo(repo_id, private=private, exist_ok=True)
        info = upload_folder(repo_id=repo_id, folder_path=model_dir,
                             allow_patterns=[*MODEL_FILES, *OPTIONAL_MODEL_FILES, *CARD_FILES, *export], delete_patterns=stale,
                             revision=revision, commit_message=commit_message or "Upload captioner model")
    except Exception as error:
        raise ModelSourceError(f"could not push {model_dir} to {repo_id!r}: {hub_reason(error)}") from None
    return str(getattr(info, "commit_url", info))
