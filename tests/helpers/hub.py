"""Point in-process huggingface_hub calls at a local ``HubServer`` with a temporary cache.

Use the ``hub`` fixture (``from tests.helpers.hub import hub`` in a test module), or call ``hub_env``
yourself.
``no_retry_wait`` makes tests of interrupted downloads and refused connections fast.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hub_server import HubServer


def hub_env(monkeypatch: pytest.MonkeyPatch, server: HubServer | str, cache_dir: Path, offline: bool = False) -> None:
    """Make huggingface_hub, already imported, talk to ``server`` (or an endpoint URL) and cache in ``cache_dir``.

    These are the values the library reads at call time; the environment variables of the same names are
    only read at import, so they are set too, for code that reads them or starts subprocesses.
    """
    from huggingface_hub import constants, hf_api

    endpoint = server.endpoint if isinstance(server, HubServer) else server.rstrip("/")
    if isinstance(server, HubServer):
        server.cache_dir = cache_dir
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # behind the module-level create_repo, upload_folder, ...
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # else the user agent asks the Hub for agent names
    for name, value in [("HF_ENDPOINT", endpoint), ("HF_HUB_CACHE", str(cache_dir)), ("HF_TOKEN", "test"),
                        ("HF_HUB_OFFLINE", "1" if offline else "0"), ("HF_HUB_DISABLE_TELEMETRY", "1")]:
        monkeypatch.setenv(name, value)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """A running ``HubServer`` that in-process huggingface_hub calls use, with a fresh cache (``hub.cache_dir``)."""
    with HubServer() as server:
        hub_env(monkeypatch, server, tmp_path / "hub-cache")
        yield server


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip huggingface_hub's sleeps between retries (1 s per resumed download, backoff on errors)."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    fast_time = types.SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None})
    for module in (file_download, _http):
        monkeypatch.setattr(module, "time", fast_time)
