"""A model's ONNX export on the Hub: ``push`` publishes a valid one, the onnx backend brings it (and only
the onnx backend), and a cache without it (offline mode) still loads. Real huggingface_hub code against
the local Hub test server."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from captioner.core.inference import Captioner, load_captioner
from captioner.core.backends.choice import onnxruntime_available
from captioner.core.backends.onnx_export import (
    SHIPPED_EXPORT,
    SHIPPED_FILES,
    SHIPPED_STEP,
    ShippedExportError,
    export_to_repo,
)
from captioner.core.repository.storage import MODEL_FILES, load_model, save_model
from captioner.core.repository.publish import push_model
from tests.helpers.models import make_tiny_model
from tests.helpers.paths import ROOT
from tests.helpers.hub import hub, hub_env, no_retry_wait  # noqa: F401

pytestmark = pytest.mark.skipif(not onnxruntime_available() or importlib.util.find_spec("onnx") is None,
                                reason="needs onnxruntime and onnx")
CPU = torch.device("cpu")
PHOTO = ROOT / "examples" / "coffee.jpg"
FP32_EXPORT = (SHIPPED_EXPORT.as_posix(), SHIPPED_STEP.as_posix())  # what export_to_repo writes (no int8 encoder)


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "captioner-cache"))
    return tmp_path / "captioner-cache" / "onnx"


@pytest.fixture
def exported(tiny_model_copy):
    """A model folder with its ONNX export."""
    export_to_repo(tiny_model_copy)
    return tiny_model_copy


def onnx_requests(hub) -> list[str]:  # noqa: F811
    return [r.path for r in hub.requests if "onnx" in r.path]


def origins(captioner: Captioner) -> tuple[str, str]:
    return captioner.pipeline.onnx.origin, captioner.pipeline.onnx.step_origin


@pytest.mark.slow
def test_push_publishes_the_export_and_only_the_onnx_backend_fetches_it(hub, exported, one_thread):  # noqa: F811
    push_model(exported, "me/exported")
    assert set(hub.files("me/exported")) == {*MODEL_FILES, *FP32_EXPORT}
    for name in FP32_EXPORT:
        assert hub.files("me/exported")[name] == (exported / name).read_bytes()

    torch_user = load_captioner("me/exported", "cpu", "torch")
    assert torch_user.backend == "torch"
    assert onnx_requests(hub) == [] and not (torch_user.loaded.path / "onnx").exists()

    onnx_user = load_captioner("me/exported", "cpu", "auto")  # auto: ONNX Runtime on this CPU
    assert onnx_user.backend == "onnx" and origins(onnx_user) == ("shipped", "shipped")
    assert onnx_user.loaded.path == torch_user.loaded.path  # the same cached snapshot, now with its onnx/ folder
    assert onnx_user.pipeline.onnx.path == torch_user.loaded.path / SHIPPED_FILES[0]
    reference, found = torch_user(PHOTO, beam_size=3), onnx_user(PHOTO, beam_size=3)
    assert found.caption == reference.caption
    assert found.candidates[0].score == pytest.approx(reference.candidates[0].score, abs=1e-4)


@pytest.mark.slow
def test_offline_with_a_cache_that_lacks_the_export_the_backend_exports_it(hub, exported, monkeypatch,
                                                                          one_thread):  # noqa: F811
    hub.add_repo("team/exported", exported)
    assert set(hub.files("team/exported")) == {*MODEL_FILES, *FP32_EXPORT}
    load_model("team/exported")  # a torch user's download: the model files (the listing names onnx/ too)
    hub_env(monkeypatch, hub, hub.cache_dir, offline=True)
    before = len(hub.requests)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # offline without the export is no fault: nothing to warn about
        offline = Captioner(load_model("team/exported", optional_files=SHIPPED_FILES), CPU, "onnx")
    assert origins(offline) == ("exported", "exported") and len(hub.requests) == before

    hub_env(monkeypatch, hub, hub.cache_dir)  # online: the export is fetched into the cache
    assert origins(Captioner(load_model("team/exported", optional_files=SHIPPED_FILES), CPU, "onnx")) == (
        "shipped", "shipped")
    hub_env(monkeypatch, hub, hub.cache_dir, offline=True)  # and offline, now that the cache has it
    before = len(hub.requests)
    assert origins(Captioner(load_model("team/exported", optional_files=SHIPPED_FILES), CPU, "onnx")) == (
        "shipped", "shipped")
    assert len(hub.requests) == before


@pytest.mark.slow
def test_offline_cli_with_the_model_files_only(hub, exported, tmp_path):  # noqa: F811
    hub.add_repo("team/cli", exported)
    load_model("team/cli")
    env = {**hub.environ(hub.cache_dir, HF_HUB_OFFLINE="1"), "CAPTIONER_CACHE": str(tmp_path / "cli-cache"),
           "OMP_NUM_THREADS": "1"}
    before = len(hub.requests)
    done = subprocess.run([sys.executable, "-m", "captioner", "caption", str(PHOTO), "--model", "team/cli",
                           "--backend", "onnx"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == load_captioner(exported, "cpu", "torch")(PHOTO).caption
    assert len(hub.requests) == before
    assert len(list((tmp_path / "cli-cache" / "onnx").glob("*.onnx"))) == 2  # exported from the weights


def test_a_repository_without_an_export_loads_quietly(hub, tiny_model_dir, one_thread):  # noqa: F811
    push_model(tiny_model_dir, "me/plain")
    assert set(hub.files("me/plain")) == set(MODEL_FILES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        captioner = Captioner(load_model("me/plain", optional_files=SHIPPED_FILES), CPU, "onnx")
    assert origins(captioner) == ("exported", "exported")


@pytest.mark.slow
def test_push_refuses_an_export_of_other_weights_and_removes_one_the_folder_no_longer_has(
        hub, exported, tmp_path):  # noqa: F811
    push_model(exported, "me/model")
    model, vocab = make_tiny_model(seed=4)
    save_model(model, vocab, exported)  # new weights in the same folder: its onnx/ is kept, and is now stale
    with pytest.raises(ShippedExportError, match=r"encoder_model\.onnx does not belong to this model: its recorded "
                                                 r"weights_sha256 do not match .*export-onnx"):
        push_model(exported, "me/model")
    assert hub.files("me/model")["model.safetensors"] != (exported / "model.safetensors").read_bytes()

    done = subprocess.run([sys.executable, "-m", "captioner", "push", str(exported), "me/model"],
                          env=hub.environ(hub.cache_dir), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"error: {exported / SHIPPED_FILES[0]} does not belong to this model")

    shutil.rmtree(exported / "onnx")
    push_model(exported, "me/model")  # the old export goes from the repository too
    assert set(hub.files("me/model")) == set(MODEL_FILES)
    assert hub.files("me/model")["model.safetensors"] == (exported / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_an_export_that_cannot_be_fetched_is_left_out_with_a_warning(hub, exported, monkeypatch, no_retry_wait,
                                                                     one_thread):  # noqa: F811
    from tests.helpers.hub_server import free_port_url

    hub.add_repo("team/flaky", exported)
    hub.fail_next("/onnx/", "500", method="HEAD", times=50)  # on every try: the export is out of reach
    with pytest.warns(UserWarning, match=r"could not fetch onnx/encoder_model\.onnx, onnx/decoder_step\.onnx, "
                                         r"onnx/encoder_model_int8\.onnx of 'team/flaky' \(.*500.*\); "
                                         r"going on without them"):
        captioner = Captioner(load_model("team/flaky", optional_files=SHIPPED_FILES), CPU, "onnx")
    assert origins(captioner) == ("exported", "exported")

    hub.clear_faults()
    assert origins(Captioner(load_model("team/flaky", optional_files=SHIPPED_FILES), CPU, "onnx")) == (
        "shipped", "shipped")  # the next load fetches them
    hub_env(monkeypatch, free_port_url(), hub.cache_dir)  # the Hub unreachable: a cached export needs no request
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert origins(Captioner(load_model("team/flaky", optional_files=SHIPPED_FILES), CPU, "onnx")) == (
            "shipped", "shipped")
