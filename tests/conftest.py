"""Shared fixtures: small random models in the real format, example photos; hypothesis profiles;
the marks that sort the suite.

``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) runs many examples per property; the default ``dev``
profile runs a few, so that a local run stays quick.

Marks: ``browser`` (headless Chromium), ``stress`` (huge images, floods, memory budgets: every test
that uses a huge-image fixture, and those marked), ``ray`` (a local Ray cluster: the files
``RAY_TESTS`` name), ``slow`` (two seconds or more; set on each test).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from captioner.core.repository.storage import save_model
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import EXAMPLES, ROOT

settings.register_profile("ci", max_examples=350)
settings.register_profile("dev", max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

RAY_TESTS = ("tests/serving/test_ray_", "tests/serving/test_serve_security.py")
HUGE_IMAGES = {"huge_png", "huge_jpeg"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(ROOT).as_posix().startswith(RAY_TESTS):
            item.add_marker(pytest.mark.ray)
        if HUGE_IMAGES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stress)


@pytest.fixture(scope="session", autouse=True)
def captioner_cache(tmp_path_factory) -> Path:
    """Exports and features that tests (and the apps and commands they start) cache go to a folder of
    the session, never to the user's cache."""
    folder = tmp_path_factory.mktemp("captioner-cache")
    os.environ["CAPTIONER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """For tests of tiny models: one thread runs them about as fast as two, and on a machine busy
    with other work (CI, parallel jobs) many times faster than threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    model, vocab = make_tiny_model()
    return save_model(model, vocab, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A copy that a test may damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="session")
def app_model(tmp_path_factory) -> Path:
    """The small model the app tests show (see ``tests.helpers.app.make_app_model``)."""
    from tests.helpers.app import make_app_model

    return make_app_model(tmp_path_factory.getbasetemp() / "app-model")


@pytest.fixture(scope="session")
def example_photos() -> dict[str, Path]:
    photos = {p.stem: p for p in sorted(EXAMPLES.glob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    assert photos, "examples/ holds no photos"
    return photos
