"""Model repositories: save/load round trip, the offline Hub cache, refusing broken files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.core.model import search
from captioner.core.errors import ModelFormatError, ModelSourceError
from captioner.core.repository.storage import MODEL_FILES, load_model, locate, save_model
from captioner.core.inference import Captioner
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import ROOT


def _photo():
    rng = np.random.default_rng(0)
    return (rng.random((120, 160, 3)) * 255).astype(np.uint8)


def test_round_trip_gives_same_outputs(tiny_model_dir):
    model, vocab = make_tiny_model()
    loaded = load_model(tiny_model_dir)
    assert sorted(os.listdir(tiny_model_dir)) == sorted(MODEL_FILES)
    assert loaded.vocab.tokens == vocab.tokens and loaded.config.embed_size == 32
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model.encoder(pixels)
        got = loaded.model.encoder(pixels)
    assert torch.equal(expected, got)
    assert [h.tokens for h in search.greedy(model.steps, expected, 12)] == [h.tokens for h in search.greedy(loaded.model.steps, got, 12)]
    card = (tiny_model_dir / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-to-text" in card


def test_half_precision_save_is_smaller_and_loads_as_float32(tmp_path, tiny_model_dir):
    model, vocab = make_tiny_model()
    save_model(model, vocab, tmp_path / "half", half_precision=True)
    size = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_model_dir / "model.safetensors").stat().st_size
    loaded = load_model(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_save_replaces_a_model_in_place_and_keeps_other_files(tmp_path):
    model, vocab = make_tiny_model(seed=3)
    out = tmp_path / "m"
    save_model(model, vocab, out)
    (out / "notes.txt").write_text("keep me")
    save_model(make_tiny_model(seed=4)[0], vocab, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folders left behind


def test_missing_local_dir_and_bad_ids(tmp_path):
    with pytest.raises(ModelSourceError, match="not a directory and not a Hub id"):
        locate(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ModelSourceError, match="not a directory"):
        locate("just-a-name")


@pytest.mark.slow
def test_unreachable_hub_names_source_and_what_was_tried(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", "someone/nothing@v2",
                           str(ROOT / "tests" / "conftest.py")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "someone/nothing@v2" in proc.stderr and "offline" in proc.stderr and "Traceback" not in proc.stderr


def write_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> None:
    """The layout huggingface_hub writes: blobs by hash, a snapshot of links, refs/main."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in folder.iterdir():
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


@pytest.mark.slow
def test_load_by_owner_name_from_offline_hub_cache(tmp_path, tiny_model_dir):
    write_hub_cache(tmp_path / "hub", "captioner-tests/tiny", tiny_model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    image = tmp_path / "photo.png"
    from PIL import Image
    Image.fromarray(_photo()).save(image)
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", "captioner-tests/tiny",
                           "--json", str(image)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    direct = Captioner(load_model(tiny_model_dir), torch.device("cpu"))(image)
    assert result["caption"] == direct.caption and result["model"] == "captioner-tests/tiny"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(vocab_size=10**9), "vocab_size must be an integer from 5 to 500000"),
    (lambda c: c.update(hidden_size=-3), "hidden_size must be"),
    (lambda c: c.update(embed_size="256"), "embed_size must be"),
    (lambda c: c.update(backbone="vgg99"), "unknown backbone"),
    (lambda c: c.update(encoder_output="pixels"), "encoder_output"),
    (lambda c: c.update(surprise=1), "unknown fields"),
    (lambda c: c.update(std=[0, 1, 1]), "std must be positive"),
])
def test_bad_config_refused(tiny_model_copy, edit, message):
    config = json.loads((tiny_model_copy / "config.json").read_text())
    edit(config)
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=message):
        load_model(tiny_model_copy)


def test_vocab_size_mismatch_refused(tiny_model_copy):
    tokens = json.loads((tiny_model_copy / "vocab.json").read_text())
    (tiny_model_copy / "vocab.json").write_text(json.dumps(tokens + ["extra"]))
    with pytest.raises(ModelFormatError, match="config.json says vocab_size"):
        load_model(tiny_model_copy)


def test_truncated_and_tampered_weights_detected(tiny_model_copy):
    weights = tiny_model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_model(tiny_model_copy)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_model(tiny_model_copy)
    # without a recorded digest, safetensors' own checks still catch truncation
    config = json.loads((tiny_model_copy / "config.json").read_text())
    del config["extra"]
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="not a valid safetensors"):
        load_model(tiny_model_copy)


def test_weights_that_do_not_fit_the_config_refused(tiny_model_copy, tmp_path):
    other, vocab = make_tiny_model()
    config = json.loads((tiny_model_copy / "config.json").read_text())
    config["hidden_size"] = 64
    del config["extra"]
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="has shape"):
        load_model(tiny_model_copy)


def test_missing_files_named(tiny_model_copy):
    (tiny_model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="model.safetensors is missing"):
        load_model(tiny_model_copy)
    shutil.rmtree(tiny_model_copy)
    tiny_model_copy.mkdir()
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        load_model(tiny_model_copy)
