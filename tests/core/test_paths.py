"""The one rule for the captioner's cache folder, as every cache (ONNX exports, features, imported
tutorial models) applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.core.backends.onnx_runtime import export_cache_dir
from captioner.core.paths import cache_root
from captioner.training.features import default_cache_dir


def every_cache() -> list[Path]:
    from captioner.core.paths import cache_dir

    return [export_cache_dir(), default_cache_dir(), cache_dir("tutorial-coco")]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CAPTIONER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # a cache that followed the working folder would land here
    return tmp_path / "home"


def test_the_default_is_under_the_home_folder(home):
    assert cache_root() == home / ".cache" / "captioner"
    assert every_cache() == [home / ".cache" / "captioner" / name for name in ("onnx", "features", "tutorial-coco")]


@pytest.mark.parametrize("xdg", ["", "   ", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_is_ignored_not_the_current_folder(home, monkeypatch, xdg):
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    for cache in every_cache():
        assert cache.is_absolute() and cache.parent == home / ".cache" / "captioner", cache
        assert not cache.resolve().is_relative_to(Path.cwd().resolve())


def test_an_absolute_xdg_cache_home_is_used(home, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert {cache.parent for cache in every_cache()} == {tmp_path / "xdg" / "captioner"}


def test_captioner_cache_with_a_tilde_is_expanded_for_every_cache(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE", "~/cc")
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    assert {cache.parent for cache in every_cache()} == {home / "cc"}
    assert not any("~" in str(cache) for cache in every_cache())
