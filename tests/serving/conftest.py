"""A local Ray cluster per test module, and the caption service on it (see tests.helpers.ray_cluster)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.app import free_port
from tests.helpers.paths import ROOT
from tests.helpers.ray_cluster import RAY_ENV, local_cluster

HAS_RAY = importlib.util.find_spec("ray") is not None


def driver_env() -> dict[str, str]:
    """For subprocesses: this checkout's captioner and the test cluster's token."""
    return {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Path:
    """Gradio's upload folder in the cluster's workers (their ``GRADIO_TEMP_DIR``)."""
    return tmp_path_factory.mktemp("gradio-uploads")


@pytest.fixture(scope="module")
def cluster(upload_dir) -> Iterator[str]:
    if not HAS_RAY:
        pytest.skip('needs Ray: pip install "captioner[ray]"')
    from captioner.serving.ray_serve import use_returning_allocator

    use_returning_allocator()  # as `python -m captioner serve` does before it starts a local cluster
    workers_env = {"GRADIO_TEMP_DIR": str(upload_dir), "CAPTIONER_CACHE": os.environ["CAPTIONER_CACHE"]}
    with local_cluster(workers_env) as address:
        yield address


@contextlib.contextmanager
def running_service(name: str, prefix: str = "/", port: int | None = None, **settings) -> Iterator[str]:
    """``build_app(**settings)`` deployed as application ``name`` at ``prefix`` (Serve's proxy
    started on ``port`` if it is not running yet); yields the application's URL."""
    from ray import serve

    from captioner.serving.ray_serve import build_app, http_options

    if port is not None:
        serve.start(http_options=http_options("127.0.0.1", port))
    serve.run(build_app(**settings), name=name, route_prefix=prefix)
    try:
        yield prefix.rstrip("/")
    finally:
        serve.delete(name)


@pytest.fixture(scope="module")
def service(cluster) -> Iterator[str]:
    """The caption service with the web page (bundled model, torch backend) on a free port; yields its URL.
    Its requests may take 10 minutes: tests of the time limit use their own deployment."""
    port = free_port()
    # torch: not the onnx that auto would choose on this CPU
    with running_service("captioner", "/", port=port, max_batch_size=8, batch_wait_ms=100, max_upload_mb=2,
                         backend="torch", request_timeout_s=600) as prefix:
        yield f"http://127.0.0.1:{port}{prefix}"
