"""Hub sources through the real huggingface_hub code against a local Hub-compatible server."""

import subprocess
import sys

import pytest
import torch

from captioner.core.errors import ModelFormatError, ModelSourceError
from captioner.core.repository.storage import MODEL_FILES, load_model, save_model
from captioner.core.repository.publish import push_model
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import ROOT
from tests.helpers.hub import hub, no_retry_wait  # noqa: F401
from tests.helpers.hub_server import free_port_url


def _files(folder):
    return {name: (folder / name).read_bytes() for name in MODEL_FILES}


def _greedy(loaded):
    """A fingerprint of the weights: decoder logits for fixed inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        return loaded.model.decoder.step(torch.randn(3, 32))[0].round(decimals=4).tolist()


def test_owner_name_and_revisions(hub, tiny_model_dir, tmp_path):
    other = save_model(make_tiny_model(seed=7)[0], make_tiny_model()[1], tmp_path / "other")
    hub.add_repo("team/captioner", _files(tiny_model_dir))
    sha = hub.add_repo("team/captioner", _files(other), revision="v2")
    main, v2 = load_model("team/captioner"), load_model("team/captioner@v2")
    assert _greedy(main) == _greedy(load_model(tiny_model_dir))
    assert _greedy(v2) == _greedy(load_model(other)) != _greedy(main)
    assert _greedy(load_model(f"team/captioner@{sha}")) == _greedy(v2)
    assert main.source == "team/captioner" and str(main.path).startswith(str(hub.cache_dir))


@pytest.mark.parametrize("source, message", [
    ("team/nothing", "no such repository"),
    ("team/captioner@v9", "that revision does not exist"),
])
def test_missing_repo_and_revision(hub, tiny_model_dir, source, message):
    hub.add_repo("team/captioner", _files(tiny_model_dir))
    with pytest.raises(ModelSourceError, match=message) as error:
        load_model(source)
    assert source in str(error.value) and hub.endpoint in str(error.value)


def test_missing_file_in_repo(hub, tiny_model_dir):
    files = _files(tiny_model_dir)
    del files["model.safetensors"]
    hub.add_repo("team/partial", files)
    with pytest.raises(ModelFormatError, match="model.safetensors is missing"):
        load_model("team/partial")


def test_unreachable_hub(monkeypatch, tmp_path):
    from tests.helpers.hub import hub_env

    hub_env(monkeypatch, free_port_url(), tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="could not get model 'team/captioner'"):
        load_model("team/captioner")


def test_interrupted_download_then_retry_uses_a_sound_cache(hub, no_retry_wait, tiny_model_dir):  # noqa: F811
    hub.add_repo("team/captioner", _files(tiny_model_dir))
    hub.fail_next("model.safetensors", "disconnect")
    hub.fail_next("model.safetensors", "500")
    with pytest.raises(ModelSourceError, match="could not get model"):
        load_model("team/captioner")
    assert _greedy(load_model("team/captioner")) == _greedy(load_model(tiny_model_dir))


def test_damaged_download_is_detected_and_fetched_again(hub, tiny_model_dir):
    hub.add_repo("team/captioner", _files(tiny_model_dir))
    hub.fail_next("model.safetensors", "corrupt")
    loaded = load_model("team/captioner")  # the SHA-256 in config.json catches it; the second fetch is sound
    assert _greedy(loaded) == _greedy(load_model(tiny_model_dir))
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("model.safetensors")]
    assert len(gets) == 2


@pytest.mark.slow
def test_offline_mode_uses_the_cache_only(hub, tiny_model_dir):
    hub.add_repo("team/captioner", _files(tiny_model_dir))
    load_model("team/captioner")
    photo = sorted((ROOT / "examples").glob("*.jpg"))[0]
    env = hub.environ(hub.cache_dir, HF_HUB_OFFLINE="1")
    before = len(hub.requests)
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", "team/captioner", str(photo)],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests) == before
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", "team/other", str(photo)],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "offline" in proc.stderr


def test_push_uploads_a_loadable_model(hub, tiny_model_dir, tmp_path):
    push_model(tiny_model_dir, "me/my-captioner")
    assert set(hub.files("me/my-captioner")) == set(MODEL_FILES)
    assert _greedy(load_model("me/my-captioner")) == _greedy(load_model(tiny_model_dir))


def test_push_publishes_the_training_plot_the_card_shows(hub, tiny_model_copy):
    (tiny_model_copy / "training.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tiny_model_copy / "checkpoint.pt").write_bytes(b"not for the Hub")
    push_model(tiny_model_copy, "me/with-plot")
    assert set(hub.files("me/with-plot")) == {*MODEL_FILES, "training.png"}


def test_push_refuses_a_broken_model(hub, tiny_model_copy):
    (tiny_model_copy / "vocab.json").write_text("[]")
    with pytest.raises(ModelFormatError):
        push_model(tiny_model_copy, "me/broken")
    assert "me/broken" not in hub.repos


@pytest.mark.slow
def test_push_from_the_cli(hub, tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "captioner", "push", str(tiny_model_dir), "me/cli-model"],
                          env=hub.environ(hub.cache_dir), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert set(hub.files("me/cli-model")) == set(MODEL_FILES)


def test_a_hub_model_brings_its_caption_phrases_and_push_publishes_them(hub, tmp_path, example_photos):
    import shutil

    from captioner.core.confidence import ClassMassRule
    from captioner.core.confidence.phrases import FILE_NAME
    from captioner.core.inference import Captioner
    from captioner.core.repository.storage import BUNDLED_MODEL_DIR

    if not (BUNDLED_MODEL_DIR / FILE_NAME).is_file():
        pytest.skip("no bundled model")
    folder = shutil.copytree(BUNDLED_MODEL_DIR, tmp_path / "bundled")
    push_model(folder, "me/calibrated")
    assert set(hub.files("me/calibrated")) == {*MODEL_FILES, FILE_NAME}
    loaded = load_model("me/calibrated")
    assert (loaded.path / FILE_NAME).read_bytes() == (BUNDLED_MODEL_DIR / FILE_NAME).read_bytes()
    captioner = Captioner(loaded, torch.device("cpu"))
    assert isinstance(captioner.confidence, ClassMassRule)
    assert captioner(example_photos["chelsea-the-cat"]).calibrated
