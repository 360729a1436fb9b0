"""The feature cache: right values, computed once, keyed safely, and safe to interrupt."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from tests.helpers.shapes import make_shapes

from captioner.core.model.encoders import load_pretrained_weights
from captioner.training.features import FeatureCache, FeatureSpec, extract_features
from captioner.core.images.preprocess import build_preprocessor
from captioner.core.images.decode import load_image
from captioner.core.model.network import ShowAndTell
from captioner.training.job import build_config
from tests.helpers.paths import ROOT

IMAGE_SIZE = 32  # tiny crops keep the real backbone fast; the cache works the same at any size


pytestmark = pytest.mark.usefixtures("one_thread")


def lite0(image_size: int = IMAGE_SIZE, encoder_output: str = "features") -> ShowAndTell:
    model = ShowAndTell(build_config(10, "efficientnet-lite0", encoder_output, image_size=image_size))
    load_pretrained_weights(model.encoder.backbone, "efficientnet-lite0")
    return model.eval()


class EncoderCalls:
    """Counts the images that go through a backbone (a forward hook on the real module)."""

    def __init__(self, model: ShowAndTell):
        self.images = 0
        self.handle = model.encoder.backbone.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.images += output.shape[0]

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def model():
    return lite0()


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    items = make_shapes(tmp_path_factory.mktemp("shapes"), per_combination=1)
    return [item.image_path for item in items]  # 48 distinct images


def direct_features(model: ShowAndTell, paths) -> torch.Tensor:
    config = model.config
    preprocess = build_preprocessor(config.resize, config.image_size, config.mean, config.std)
    with torch.inference_mode():
        return model.encoder.backbone_features(torch.stack([preprocess(load_image(p)) for p in paths]))


def test_features_equal_the_backbone_output_and_are_computed_once(model, image_paths, tmp_path):
    paths = image_paths[:10]
    expected = direct_features(model, paths)
    calls = EncoderCalls(model)
    first = extract_features(model, paths, tmp_path, batch_size=4, progress=False)
    assert calls.images == 10 and first.computed == 10 and first.reused == 0
    assert first.kept == list(range(10)) and first.failures == []
    torch.testing.assert_close(first.features, expected, rtol=1e-4, atol=1e-5)

    renamed = tmp_path / "renamed.png"  # same bytes, new name: the key is the content
    shutil.copy(paths[3], renamed)
    again = extract_features(model, [*paths, renamed], tmp_path, batch_size=4, progress=False)
    assert calls.images == 10 and again.computed == 0 and again.reused == 10
    assert torch.equal(again.features[:10], first.features)
    assert torch.equal(again.features[10], first.features[3])
    calls.close()


def test_a_different_backbone_setting_never_reuses_features(model, image_paths, tmp_path):
    paths = image_paths[:3]
    extract_features(model, paths, tmp_path, progress=False)
    variants = {"preprocessing": lite0(image_size=40), "encoder output": lite0(encoder_output="class_log_probs")}
    changed = lite0()
    with torch.no_grad():
        changed.encoder.backbone.net._fc.bias.add_(0.01)  # e.g. a fine-tuned backbone
    variants["weights"] = changed
    folders = {FeatureSpec.of(model.config, model.encoder.backbone).folder_name}
    for name, variant in variants.items():
        result = extract_features(variant, paths, tmp_path, progress=False)
        assert result.computed == 3 and result.reused == 0, name
        folders.add(FeatureSpec.of(variant.config, variant.encoder.backbone).folder_name)
    assert len(folders) == 4 and {p.name for p in tmp_path.iterdir()} == folders


def test_unusable_images_are_reported_and_skipped(model, image_paths, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    truncated = images / "truncated.png"
    truncated.write_bytes(image_paths[0].read_bytes()[:200])
    text = images / "notes.jpg"
    text.write_text("not a picture")
    copy_of_text = images / "notes-copy.jpg"
    copy_of_text.write_text("not a picture")
    paths = [image_paths[0], truncated, images / "missing.png", text, image_paths[1], copy_of_text]
    result = extract_features(model, paths, tmp_path / "cache", progress=False)
    assert result.kept == [0, 4] and result.features.shape == (2, 1280)
    reasons = dict(result.failures)
    assert set(reasons) == {str(truncated), str(images / "missing.png"), str(text), str(copy_of_text)}
    assert "truncated or corrupt" in reasons[str(truncated)]
    assert reasons[str(images / "missing.png")] == "file not found"
    assert "not an image" in reasons[str(text)] and "not an image" in reasons[str(copy_of_text)]


def _check_cache(folder) -> int:
    """Every shard opens and matches its header; no temporary files. Returns the number of rows."""
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    rows = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as file:
            features = file.get_tensor("features")
            keys = file.metadata()["keys"]
        assert features.shape[0] == len(json.loads(keys)) and torch.isfinite(features).all()
        rows += features.shape[0]
    return rows


def test_interrupted_extraction_keeps_finished_images_and_restart_does_only_the_rest(model, image_paths, tmp_path):
    paths = image_paths[:40]

    def interrupt(done: int) -> None:
        if done >= 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, paths, tmp_path, batch_size=8, shard_size=16, on_batch=interrupt, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert _check_cache(folder) == 24  # a full shard of 16 plus the 8 finished when Ctrl-C came

    calls = EncoderCalls(model)
    resumed = extract_features(model, paths, tmp_path, batch_size=8, shard_size=16, progress=False)
    calls.close()
    assert calls.images == 16 and resumed.computed == 16 and resumed.reused == 24
    assert _check_cache(folder) == 40
    torch.testing.assert_close(resumed.features, direct_features(model, paths), rtol=1e-4, atol=1e-5)


def test_damaged_shards_and_stale_temporary_files_are_cleaned_up(model, image_paths, tmp_path):
    paths = image_paths[:8]
    extract_features(model, paths, tmp_path, batch_size=4, shard_size=4, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    damaged = sorted(folder.glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # e.g. a disk error after the write
    (folder / ".tmp-999999999-leftover").write_bytes(b"partial")  # from a process that is gone
    (folder / f".tmp-{os.getppid()}-writing").write_bytes(b"partial")  # another live process
    calls = EncoderCalls(model)
    result = extract_features(model, paths, tmp_path, batch_size=4, shard_size=4, progress=False)
    calls.close()
    assert calls.images == 4 and result.reused == 4 and not damaged.exists()
    assert not (folder / ".tmp-999999999-leftover").exists() and (folder / f".tmp-{os.getppid()}-writing").exists()
    (folder / f".tmp-{os.getppid()}-writing").unlink()
    assert _check_cache(folder) == 8


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.training.test_features import lite0
    from captioner.training.features import extract_features
    paths = sorted(Path(sys.argv[2]).glob("*.png"))
    extract_features(lite0(), paths, sys.argv[3], batch_size=4, shard_size=4, progress=False,
                     on_batch=lambda done: time.sleep(0.4))
""")


@pytest.mark.slow
def test_a_killed_extraction_leaves_a_consistent_cache(model, image_paths, tmp_path):
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ROOT), str(image_paths[0].parent),
                                str(cache)], cwd=ROOT, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(cache.glob("*/*.safetensors"))) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    (folder,) = list(cache.iterdir())
    done = _check_cache(folder)
    assert 8 <= done < len(image_paths)
    calls = EncoderCalls(model)
    result = extract_features(model, sorted(image_paths), cache, batch_size=8, progress=False)
    calls.close()
    assert calls.images == len(image_paths) - done and result.reused == done
    assert _check_cache(folder) == len(image_paths)


def test_cache_index_is_the_shard_headers(model, image_paths, tmp_path):
    result = extract_features(model, image_paths[:6], tmp_path, batch_size=4, shard_size=4, progress=False)
    spec = FeatureSpec.of(model.config, model.encoder.backbone)
    cache = FeatureCache(tmp_path, spec)  # a fresh process would see the same
    assert len(cache) == 6 and len(cache.shards) == 2
    from captioner.training.features import file_key

    assert torch.equal(cache.load([file_key(p) for p in image_paths[:6]]), result.features)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.load([file_key(image_paths[10])])
