"""--precision reaches the workers of caption-dataset and the replicas of serve (a real local Ray cluster,
started once for this module and always shut down)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from captioner.core.backends.choice import onnxruntime_available
from tests.helpers.int8 import ship_passing_int8
from tests.helpers.paths import EXAMPLES
from tests.helpers.ray_cluster import local_cluster

HAS_RAY = importlib.util.find_spec("ray") is not None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not HAS_RAY or not onnxruntime_available(), reason='needs Ray and onnxruntime: pip install "captioner[ray,onnx]"')]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> Path:
    """A small model whose int8 encoder passed its check, so that ``auto`` and ``int8`` both run it."""
    from captioner.core.repository.storage import save_model
    from tests.helpers.models import make_tiny_model
    from tests.helpers.photos import write_real_photos

    folder = tmp_path_factory.mktemp("int8-model")
    model_dir = save_model(*make_tiny_model(seed=2), folder / "model")
    ship_passing_int8(model_dir, write_real_photos(folder / "photos"))
    return model_dir


@pytest.fixture(scope="module")
def cluster():
    """A local cluster with the test token of ``tests.helpers.ray_cluster`` (one token for every test
    module: a process reads its token once)."""
    with local_cluster({"CAPTIONER_PRECISION": ""}) as address:
        yield address


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for path in sorted(EXAMPLES.glob("*.jpg"))[:4]:
        shutil.copy(path, folder / path.name)
    return folder


def test_caption_dataset_workers_run_the_precision_asked_for(cluster, int8_model, images, tmp_path, capsys):
    from captioner.cli import main
    from captioner.serving.ray_data import caption_dataset

    run = caption_dataset(images, tmp_path / "int8", workers=1, model=str(int8_model), precision="int8")
    assert (run.captioned, run.failed, run.backends, run.precisions) == (4, 0, ("onnx",), ("int8",))
    assert "(onnx backend, int8 encoder)" in run.summary()
    assert main(["caption-dataset", str(images), "--out", str(tmp_path / "fp32"), "--workers", "1", "--model",
                 str(int8_model), "--precision", "fp32"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("captioned 4 of 4 images (onnx backend); "), summary
    with pytest.raises(Exception, match="unknown precision 'fp16'"):
        caption_dataset(images, tmp_path / "bad", model=str(int8_model), precision="fp16")


def test_serve_replicas_run_the_precision_asked_for(cluster, int8_model):
    import httpx
    from ray import serve

    from captioner.serving.ray_serve import build_app
    from tests.helpers.app import free_port

    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        build_app(precision="fp16")
    with pytest.raises(ValueError, match="precision int8 runs on the CPU"):
        build_app(precision="int8", gpus_per_replica=1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for precision in ("int8", "fp32"):
            serve.run(build_app(model=str(int8_model), precision=precision, ui=False), name="captioner",
                      route_prefix="/")
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).json()
            assert (health["backend"], health["precision"]) == ("onnx", precision)
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/caption", content=(EXAMPLES / "coffee.jpg").read_bytes(),
                                timeout=300).json()
            assert answer["caption"] and answer["model"]
    finally:
        serve.delete("captioner")
