"""The local Hub server works with the real huggingface_hub client: downloads, uploads, errors, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from tests.helpers.hub import hub, hub_env, no_retry_wait  # noqa: F401  (fixtures)
from tests.helpers.hub_server import HubServer, free_port_url, git_blob_sha1
from huggingface_hub import constants, create_repo, hf_hub_download, snapshot_download, upload_folder
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

MODEL_FILES = ["config.json", "model.safetensors", "vocab.json", "README.md"]
REPO = "someone/tiny-captioner"


def model_files(version: int = 1) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"version": version}).encode(),
        "model.safetensors": bytes(range(256)) * 40 + bytes([version]),
        "vocab.json": b'["<pad>", "<start>", "<end>", "<unk>", "cat"]',
        "README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n",
        "notes/extra.txt": b"not part of the model",
    }


def read_tree(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_snapshot_download_fetches_only_allowed_files(hub):
    sha = hub.add_repo(REPO, model_files())
    path = snapshot_download(REPO, allow_patterns=MODEL_FILES)
    assert Path(path) == hub.cache_dir / "models--someone--tiny-captioner" / "snapshots" / sha
    assert read_tree(path) == {name: model_files()[name] for name in MODEL_FILES}
    calls = {(r.method, r.path.split("?")[0]) for r in hub.requests}
    assert ("GET", f"/api/models/{REPO}/revision/main") in calls
    assert ("GET", f"/api/models/{REPO}/tree/{sha}") in calls
    assert ("GET", f"/{REPO}/resolve/{sha}/model.safetensors") in calls
    assert not any("notes" in p for _, p in calls)


def test_revisions_branch_tag_and_commit(hub):
    old = hub.add_repo(REPO, model_files(1))
    new = hub.add_repo(REPO, model_files(2))
    assert hub.add_repo(REPO, model_files(3), revision="dev") not in (old, new)
    hub.set_ref(REPO, "v1.0", old)

    def version(revision: str | None) -> int:
        return json.loads(Path(snapshot_download(REPO, revision=revision), "config.json").read_text())["version"]

    assert [version(r) for r in (None, old, "v1.0", "dev")] == [2, 1, 1, 3]
    weights = Path(hf_hub_download(REPO, "model.safetensors", revision=new)).read_bytes()
    assert weights == model_files(2)["model.safetensors"]


def test_missing_repo_revision_and_file_raise_the_hub_errors(hub):
    hub.add_repo(REPO, model_files())
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("someone/nothing-here")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("someone/nothing-here", "config.json")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin")


def test_offline_mode_finds_the_cached_snapshot(hub, monkeypatch):
    sha = hub.add_repo(REPO, model_files())
    script = f"from huggingface_hub import snapshot_download; print(snapshot_download({REPO!r}))"
    online = subprocess.run([sys.executable, "-c", script], env=hub.environ(hub.cache_dir),
                            capture_output=True, text=True, check=True)
    assert Path(online.stdout.strip()).name == sha
    seen = len(hub.requests)
    offline = subprocess.run([sys.executable, "-c", script], env=hub.environ(hub.cache_dir, HF_HUB_OFFLINE="1"),
                             capture_output=True, text=True, check=True)
    assert offline.stdout == online.stdout
    assert read_tree(offline.stdout.strip()) == model_files()
    assert len(hub.requests) == seen, "offline mode must not contact the Hub"

    hub_env(monkeypatch, hub, hub.cache_dir, offline=True)  # the same, in process
    assert snapshot_download(REPO) == offline.stdout.strip()
    assert len(hub.requests) == seen


def test_create_repo_and_upload_folder_land_in_server_state(hub, tmp_path):
    folder = tmp_path / "model"
    for name, data in model_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    url = create_repo("me/uploaded", token="test")
    assert url.repo_id == "me/uploaded" and hub.files("me/uploaded") == {}
    with pytest.raises(HfHubHTTPError) as conflict:
        create_repo("me/uploaded", token="test")
    assert conflict.value.response.status_code == 409
    create_repo("me/uploaded", token="test", exist_ok=True)

    info = upload_folder(repo_id="me/uploaded", folder_path=folder, allow_patterns=MODEL_FILES, token="test")
    assert hub.repos["me/uploaded"].refs["main"] == info.oid
    assert hub.files("me/uploaded") == {name: model_files()[name] for name in MODEL_FILES}

    (folder / "config.json").write_bytes(b'{"version": 2}')
    upload_folder(repo_id="me/uploaded", folder_path=folder, allow_patterns=MODEL_FILES, token="test")
    assert hub.files("me/uploaded")["config.json"] == b'{"version": 2}'
    assert hub.files("me/uploaded", info.oid)["config.json"] == model_files()["config.json"]
    assert len([r for r in hub.requests if r.method == "POST" and "/commit/main" in r.path]) == 2


def test_interrupted_download_is_resumed_with_a_range_request(hub, no_retry_wait, monkeypatch):
    # The client keeps what it got only in whole chunks (10 MB by default): make chunks small.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.add_repo(REPO, model_files())
    hub.fail_next("model.safetensors", "disconnect")
    path = hf_hub_download(REPO, "model.safetensors")
    assert Path(path).read_bytes() == model_files()["model.safetensors"]
    ranges = [r.headers.get("range") for r in hub.requests if r.method == "GET" and "model.safetensors" in r.path]
    assert ranges == [None, "bytes=5120-"]  # half of the 10241 bytes came, in whole chunks, before the cut


def test_failed_download_raises_and_a_retry_leaves_a_usable_cache(hub, no_retry_wait):
    hub.add_repo(REPO, model_files())
    hub.fail_next("model.safetensors", "disconnect")
    hub.fail_next("model.safetensors", "500")
    with pytest.raises(HfHubHTTPError):
        snapshot_download(REPO, allow_patterns=MODEL_FILES, max_workers=1)
    blobs = hub.cache_dir / "models--someone--tiny-captioner" / "blobs"
    assert not list(blobs.glob("*.incomplete"))
    assert git_blob_sha1(model_files()["model.safetensors"]) not in os.listdir(blobs)

    path = snapshot_download(REPO, allow_patterns=MODEL_FILES)
    assert read_tree(path) == {name: model_files()[name] for name in MODEL_FILES}


def test_corrupt_500_and_head_faults(hub):
    hub.add_repo(REPO, model_files())
    hub.fail_next("config.json", "disconnect", method="HEAD")
    with pytest.raises(httpx2.RemoteProtocolError):  # the client lets this one through as is
        hf_hub_download(REPO, "config.json")
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == model_files()["config.json"]
    hub.fail_next("vocab.json", "corrupt")
    data = Path(hf_hub_download(REPO, "vocab.json")).read_bytes()
    assert len(data) == len(model_files()["vocab.json"]) and data != model_files()["vocab.json"]
    hub.add_repo("someone/other", model_files())
    hub.fail_next("/api/models/someone/other", "500")
    with pytest.raises(LocalEntryNotFoundError):  # Hub down and nothing cached for this repo
        snapshot_download("someone/other")


def test_unreachable_endpoint_without_a_cache(monkeypatch, tmp_path, no_retry_wait):
    hub_env(monkeypatch, free_port_url(), tmp_path / "cache")
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")


def test_fail_next_rejects_unknown_modes():
    with HubServer() as server, pytest.raises(ValueError):
        server.fail_next("x", "timeout")
