"""Deploy a staged Space with huggingface_hub: the model checked on the Hub, then ``create_repo``,
``upload_folder`` (which stores large files the way the Hub requires), the ``CAPTIONER_MODEL``
variable and the hardware request. The token comes from huggingface_hub's usual places
(``HF_TOKEN``, ``hf auth login``), never from an argument.
"""

from __future__ import annotations

import os
from pathlib import Path

from captioner.core.backends.onnx_export import SHIPPED_FILES
from captioner.core.repository.hub import hub_reason, hub_unreachable
from captioner.core.repository.storage import MODEL_FILES, OPTIONAL_MODEL_FILES
from captioner.serving.space import (
    CPU_HARDWARE,
    REQUIRED_MODEL_FILES,
    HubModel,
    SpaceError,
    StagedSpace,
    check_repo_id,
    is_cpu_hardware,
    normalise_hardware,
    parse_model,
    stage_space,
)


class HubUnreachable(SpaceError):
    """The Hub could not be asked (offline mode, no network)."""


def stage(folder: str | os.PathLike, repo_id: str, *, model: str | os.PathLike | None = None,
          bundle_model: bool = False, hardware: str = CPU_HARDWARE) -> StagedSpace:
    """``stage_space`` for a dry run: a Hub model is checked when the Hub can be reached (a missing one
    is refused); when it cannot, the Space is staged and a note says that the model was not checked."""
    hardware = normalise_hardware(hardware)
    source = parse_model(model)
    note = None
    if isinstance(source, HubModel):
        try:
            source = check_hub_model(source, with_export=is_cpu_hardware(hardware))
        except HubUnreachable as error:
            note = f"the model {source.source!r} was not checked: {error}"
    staged = stage_space(folder, repo_id, model=source, bundle_model=bundle_model, hardware=hardware)
    staged.notes += [note] if note else []
    return staged


def check_hub_model(model: HubModel, token: str | None = None, *, with_export: bool = False) -> HubModel:
    """``model`` with the commit its revision resolves to and its model files, read from the Hub;
    raises ``SpaceError`` when it is missing or not a captioner model. ``with_export``: its ONNX
    export (``onnx/``) counts among its files when it has one (a CPU Space runs ONNX Runtime, and
    preloading the export spares the app fetching it at start)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model.repo, revision=model.revision, token=token)
    except Exception as error:  # huggingface_hub and its HTTP client raise many types
        kind = HubUnreachable if hub_unreachable(error) else SpaceError
        raise kind(f"could not check the model {model.source!r} on the Hub: {hub_reason(error)}") from None
    names = {sibling.rfilename for sibling in info.siblings or []}
    missing = [name for name in REQUIRED_MODEL_FILES if name not in names]
    if missing:
        raise SpaceError(f"the Hub repo {model.source!r} is not a captioner model (missing {', '.join(missing)}); "
                         "publish one with `python -m captioner push DIR OWNER/NAME`")
    wanted = MODEL_FILES + OPTIONAL_MODEL_FILES + (SHIPPED_FILES if with_export else ())
    return HubModel(model.repo, model.revision, info.sha, tuple(n for n in wanted if n in names))


def require_token() -> str:
    """The token huggingface_hub would use (``HF_TOKEN``, else the one saved by ``hf auth login``)."""
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise SpaceError("no Hugging Face token found: log in with `hf auth login` (or set HF_TOKEN to a token "
                         "with write access)")
    return token


def deploy(repo_id: str, *, model: str | os.PathLike | None = None, bundle_model: bool = False,
           hardware: str = CPU_HARDWARE, private: bool = False, commit_message: str | None = None,
           progress=None) -> tuple[StagedSpace, str]:
    """Check the token and the model, stage the Space in a temporary folder and deploy it;
    returns what was staged and the Space's URL. ``progress(staged)`` is called before the upload."""
    import tempfile

    check_repo_id(repo_id)
    hardware = normalise_hardware(hardware)
    source = parse_model(model)
    require_token()
    if isinstance(source, HubModel):
        source = check_hub_model(source, with_export=is_cpu_hardware(hardware))
    with tempfile.TemporaryDirectory(prefix="captioner-space-") as tmp:
        staged = stage_space(Path(tmp) / "space", repo_id, model=source,
                             bundle_model=bundle_model, hardware=hardware)
        if progress is not None:
            progress(staged)
        return staged, deploy_space(staged, private=private, commit_message=commit_message)


def deploy_space(staged: StagedSpace, *, private: bool = False, commit_message: str | None = None) -> str:
    """Create (or update) the Space from a staged folder: repo, files, variables, hardware; returns its URL.

    Files the Space no longer needs (old package modules, examples, model folders) are deleted in the
    same commit; files outside those folders that someone added to the Space are kept.
    """
    from huggingface_hub import HfApi

    require_token()
    api = HfApi()
    step = "create the Space"
    try:
        url = api.create_repo(staged.repo_id, repo_type="space", space_sdk="gradio", private=private or None,
                              exist_ok=True)
        step = "upload the files"
        api.upload_folder(repo_id=staged.repo_id, repo_type="space", folder_path=staged.folder,
                          commit_message=commit_message or "Deploy the captioner demo",
                          delete_patterns=["captioner/**", "examples/**", "models/**"])
        step = "set the Space variables"
        current = api.get_space_variables(staged.repo_id)
        for key, value in staged.variables.items():
            if key not in current or current[key].value != value:
                api.add_space_variable(staged.repo_id, key, value, description="model the captioner app loads")
        if "CAPTIONER_MODEL" in current and "CAPTIONER_MODEL" not in staged.variables:
            api.delete_space_variable(staged.repo_id, "CAPTIONER_MODEL")  # the Space now carries its model
        step = f"request the {staged.hardware} hardware"
        api.request_space_hardware(staged.repo_id, staged.hardware)
    except SpaceError:
        raise
    except Exception as error:  # huggingface_hub and its HTTP client raise many types
        raise SpaceError(f"could not {step} for {staged.repo_id!r}: {hub_reason(error)}") from None
    return str(url)
