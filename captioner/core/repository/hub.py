"""The Hugging Face Hub side of model repositories: Hub ids, downloads into its cache, and its errors in words.

Everything goes through huggingface_hub's own primitives (``snapshot_download``, ``hf_hub_download``,
``try_to_load_from_cache``), so its cache, offline mode (``HF_HUB_OFFLINE``) and endpoint
(``HF_ENDPOINT``) work as they do everywhere else.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from captioner.core.errors import ModelSourceError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[\w./-]+))?$")  # owner/name[@rev]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # a repository to create: owner/name alone


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(owner/name, revision or None)`` for ``owner/name`` or ``owner/name@revision``, else None."""
    match = HUB_ID.match(text)
    return (match["repo"], match["revision"]) if match else None


def download_snapshot(repo_id: str, revision: str | None, source: str, files: Sequence[str], *,
                      force_download: bool = False, optional_files: Sequence[str] = ()) -> Path:
    """The cached snapshot folder of ``files`` of a Hub repository (``snapshot_download``), plus those
    of ``optional_files`` the repository has; ``ModelSourceError`` says why it could not be had."""
    from huggingface_hub import constants, snapshot_download

    tried = (f"no local folder {source!r}; then the Hugging Face Hub repo {repo_id!r}"
             f"{f' at revision {revision!r}' if revision else ''} via {constants.ENDPOINT}"
             f"{' (offline mode: cache only)' if constants.HF_HUB_OFFLINE else ''}, cache {constants.HF_HUB_CACHE}")
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(files),
                                 force_download=force_download)
    except Exception as error:  # huggingface_hub and its HTTP client raise many types
        raise ModelSourceError(f"could not get model {source!r}: {hub_reason(error)}. Tried: {tried}") from None
    if optional_files:
        fetch_optional(repo_id, Path(path), optional_files)
    return Path(path)


def fetch_optional(repo_id: str, snapshot: Path, names: Sequence[str]) -> None:
    """Fetch those of ``names`` that the repository has at the commit of ``snapshot`` (the cached
    snapshot the model files came from) into that snapshot. Optional files (the ONNX export, which
    the onnx backend can make itself): a commit's files never change, so a file already cached, or one
    the Hub said the commit lacks (huggingface_hub's cache records that), is not asked for again;
    offline, the cache is all there is; a repository without them is no fault; another failure (the
    Hub unreachable, an HTTP error) leaves the rest out with a warning."""
    from huggingface_hub import _CACHED_NO_EXIST, constants, errors, hf_hub_download, try_to_load_from_cache

    wanted = [name for name in names if not (snapshot / name).is_file()
              and try_to_load_from_cache(repo_id, name, revision=snapshot.name) is not _CACHED_NO_EXIST]
    if not wanted or constants.HF_HUB_OFFLINE:
        return
    for index, name in enumerate(wanted):
        try:
            hf_hub_download(repo_id, name, revision=snapshot.name)
        except errors.RemoteEntryNotFoundError:
            continue  # the commit lacks it (and the cache now says so)
        except Exception as error:  # noqa: BLE001 - huggingface_hub and its HTTP client raise many types
            warnings.warn(f"could not fetch {', '.join(wanted[index:])} of {repo_id!r} ({hub_reason(error)}); "
                          "going on without them", stacklevel=2)
            return


def hub_reason(error: Exception) -> str:
    """One line saying why a Hub call failed, and what to do about it where that is clear."""
    from huggingface_hub import constants, errors

    response = getattr(error, "response", None) if isinstance(error, errors.HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    if isinstance(error, errors.OfflineModeIsEnabled) or (
            isinstance(error, errors.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        return ("offline mode is on (HF_HUB_OFFLINE) and the files are not in the local Hub cache: download them "
                "once with the Hub reachable and HF_HUB_OFFLINE unset, or use a local model folder")
    if isinstance(error, errors.LocalEntryNotFoundError) and isinstance(error.__cause__, errors.HfHubHTTPError):
        return f"{hub_reason(error.__cause__)}, and the files are not in the local Hub cache"  # reached, but it failed
    if isinstance(error, errors.LocalEntryNotFoundError):  # before EntryNotFoundError, its parent
        return (f"the files are not in the local Hub cache and the Hub at {constants.ENDPOINT} could not be reached: "
                "run this once with the Hub reachable to download them (they are kept for offline use), "
                "or use a local model folder")
    if status == 401 and not isinstance(error, errors.RepositoryNotFoundError):
        return ("the Hub refused the token (invalid or expired): log in again with `hf auth login` "
                "or set HF_TOKEN to a token with write access")
    if isinstance(error, errors.RevisionNotFoundError):
        return "that revision does not exist"
    if isinstance(error, errors.RepositoryNotFoundError):
        return "no such repository, or it is private and the token may not see it"
    if isinstance(error, errors.EntryNotFoundError):
        return "a model file is missing from the repository"
    if status == 403:
        return "the token may not do this (a read-only token, or a namespace it cannot write to)"
    if status == 402:
        return "the Hub asks for payment: this needs billing set up for the account"
    if status is not None:
        return f"the Hub answered HTTP {status}: {_first_line(error)}"
    if hub_unreachable(error):
        return f"could not reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: {_first_line(error)})"
    return f"{type(error).__name__}: {_first_line(error)}"


def hub_unreachable(error: Exception) -> bool:
    """Whether ``error`` says the Hub could not be asked at all (no network, offline mode)."""
    names = {kind.__name__ for kind in type(error).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError",
                         "ConnectionError", "OfflineModeIsEnabled"})


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__
