"""A local Ray cluster for one test module (2 CPUs, no dashboard), always shut down, and the Ray
processes it started, found by ancestry (so other clusters on the machine are never touched)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psutil

# The test cluster's own token, not the machine's shared ~/.ray/auth_token: set before any test uses
# Ray (a process reads its token once), and handed to the drivers the tests start.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
os.environ.update(RAY_ENV)


@contextlib.contextmanager
def local_cluster(env_vars: dict[str, str] | None = None) -> Iterator[str]:
    """``ray.init`` a 2-CPU cluster whose workers get ``env_vars``; yields its address; Serve and Ray
    are shut down afterwards, and any Ray process of this cluster still alive is killed."""
    import ray

    for attempt in range(3):  # Ray waits only 30 s for its raylet, which a busy machine can exceed
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **(env_vars or {})}})
            break
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()
            for process in ray_processes():
                with contextlib.suppress(psutil.Error):
                    process.kill()


def ray_processes(name: str = "") -> list[psutil.Process]:
    """This process's descendants whose title starts with ``ray::`` + ``name`` (workers and actors
    of the cluster this process started)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(process.cmdline())
            if title.startswith("ray::" + name):
                found.append(process)
    return found
