"""The ONNX Runtime backend: the same captions as torch, the export cache, shipped exports, the backend choice."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.helpers.models import make_tiny_model
from tests.helpers.paths import ROOT
from captioner.core import inference
from captioner.core.errors import CaptionerError, ModelFormatError
from captioner.core.inference import Captioner, load_captioner
from captioner.core.backends.choice import onnxruntime_available, resolve_backend
from captioner.core.backends.onnx_export import SHIPPED_EXPORT, SHIPPED_STEP, BackendUnavailable, export_to_repo
from captioner.core.repository.storage import load_model, save_model
from captioner.web.batcher import SharedCaptioner

needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
CPU = torch.device("cpu")


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def both_backends(model_dir) -> tuple[Captioner, Captioner]:
    return (Captioner(load_model(model_dir, CPU), CPU, "torch"),
            Captioner(load_model(model_dir, CPU), CPU, "onnx", "fp32"))


def assert_same_results(reference, other, tolerance=1e-4):
    assert other.caption == reference.caption
    assert [c.caption for c in other.candidates] == [c.caption for c in reference.candidates]
    for mine, theirs in zip(reference.candidates, other.candidates):
        assert theirs.score == pytest.approx(mine.score, abs=tolerance)
        assert [p for _, p in theirs.words] == pytest.approx([p for _, p in mine.words], abs=tolerance)
    if reference.top_classes is None:
        assert other.top_classes is None
    else:
        assert [label for label, _ in other.top_classes] == [label for label, _ in reference.top_classes]
        assert [p for _, p in other.top_classes] == pytest.approx([p for _, p in reference.top_classes], abs=tolerance)


def assert_backends_agree(model_dir, photos) -> None:
    torch_captioner, onnx_captioner = both_backends(model_dir)
    assert (torch_captioner.backend, onnx_captioner.backend) == ("torch", "onnx")
    for beam in (1, 3):
        expected = torch_captioner(photos, beam_size=beam, num_candidates=beam)
        for one, (reference, batched) in enumerate(zip(expected, onnx_captioner(photos, beam_size=beam,
                                                                                         num_candidates=beam))):
            assert_same_results(reference, batched)
            assert_same_results(reference, onnx_captioner(photos[one], beam_size=beam, num_candidates=beam))


@pytest.mark.slow
@needs_onnxruntime
def test_bundled_model_same_captions_on_the_examples(example_photos, onnx_cache):
    assert_backends_agree(None, list(example_photos.values()))


@needs_onnxruntime
@pytest.mark.slow
def test_resnet_model_same_captions_on_the_examples(example_photos, onnx_cache, tmp_path, one_thread):
    photos = list(example_photos.values())
    model_dir = save_model(*random_resnet_model(photos), tmp_path / "resnet")
    assert len({r.caption for r in Captioner(load_model(model_dir, CPU), CPU, "torch")(photos)}) >= 3
    assert_backends_agree(model_dir, photos)


@needs_onnxruntime
@pytest.mark.slow
@pytest.mark.parametrize("backbone, output", [("efficientnet-lite1", "class_log_probs"),
                                              ("efficientnet-lite2", "class_probs")])
def test_other_efficientnet_encoders(backbone, output, example_photos, onnx_cache, tmp_path, one_thread):
    from captioner.core.model.encoders import load_pretrained_weights

    model, vocab = make_tiny_model(seed=5, backbone=backbone, encoder_output=output)
    try:
        load_pretrained_weights(model.encoder.backbone, backbone)
    except CaptionerError as error:  # the weights package is a dev requirement
        pytest.skip(str(error))
    photos = [example_photos["coffee"], example_photos["rocket"]]
    model_dir = save_model(model, vocab, tmp_path / backbone)
    torch_captioner, onnx_captioner = both_backends(model_dir)
    pixels = torch.stack([torch_captioner.pipeline.prepare(photo) for photo in photos])
    assert torch.allclose(onnx_captioner.pipeline.features(pixels), torch_captioner.pipeline.features(pixels),
                          atol=1e-5)
    assert_backends_agree(model_dir, photos)


def random_resnet_model(photos):
    """The tutorial's architecture (ResNet-152 pooled features) with random weights and a tiny decoder,
    tamed so that different photos get different captions: each residual branch is scaled down (a
    random ResNet-152's activations otherwise grow to ~1e7) and the projection's BatchNorm statistics
    are those of these photos."""
    from torchvision.models.resnet import Bottleneck

    from captioner.core.images.decode import load_image
    from captioner.core.images.preprocess import preprocessor_for

    model, vocab = make_tiny_model(seed=3, backbone="resnet152", end_bias=-1.0)
    preprocess = preprocessor_for(model.config)
    with torch.no_grad():
        for module in model.encoder.backbone.modules():
            if isinstance(module, Bottleneck):
                module.bn3.weight.mul_(0.1)
        embeddings = model.encoder.linear(model.encoder.backbone(torch.stack([preprocess(load_image(p))
                                                                              for p in photos])))
        model.encoder.bn.running_mean.copy_(embeddings.mean(0))
        model.encoder.bn.running_var.copy_(embeddings.var(0))
    return model, vocab


@needs_onnxruntime
@pytest.mark.slow
def test_same_captions_on_many_real_photos(onnx_cache):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from onnx_agreement import compare, real_photos

    photos = real_photos()
    assert len(photos) >= 56
    differences, largest, compared = compare(None, photos)
    assert compared == 2 * len(photos)
    assert differences == []
    assert largest < 1e-4


def cache_files(cache: Path, graph: str = "efficientnet-lite0") -> list[Path]:
    return sorted(cache.glob(f"{graph}-*.onnx"))


def intact(path: Path) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.stem.rsplit("-", 1)[1]


@pytest.mark.slow
@needs_onnxruntime
def test_export_cache_is_written_reused_and_rebuilt_when_damaged(tiny_model_dir, onnx_cache, example_photos,
                                                               one_thread):
    photo = example_photos["coffee"]
    reference = Captioner(load_model(tiny_model_dir, CPU), CPU, "torch")(photo)

    first = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
    assert (first.pipeline.onnx.origin, first.pipeline.onnx.step_origin) == ("exported", "exported")
    [path], [step_path] = cache_files(onnx_cache), cache_files(onnx_cache, "decoder-step")
    assert first.pipeline.onnx.path == path and intact(path) and first.pipeline.onnx.step_path == step_path and intact(step_path)
    written = path.stat().st_mtime_ns

    second = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
    assert (second.pipeline.onnx.origin, second.pipeline.onnx.step_origin) == ("cache", "cache") and second.pipeline.onnx.path == path
    assert cache_files(onnx_cache) == [path] and path.stat().st_mtime_ns == written
    assert_same_results(reference, second(photo))

    garbage = b"not an ONNX graph, but named with its own SHA-256"  # intact, yet onnxruntime refuses it
    forged = path.with_name(f"{path.stem.rsplit('-', 1)[0]}-{hashlib.sha256(garbage).hexdigest()}.onnx")
    path.unlink()
    forged.write_bytes(garbage)
    assert Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx").pipeline.onnx.origin == "exported"
    assert not forged.exists() and [intact(p) for p in cache_files(onnx_cache)] == [True]

    step_path.write_bytes(step_path.read_bytes()[:100])
    rebuilt = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
    assert (rebuilt.pipeline.onnx.origin, rebuilt.pipeline.onnx.step_origin) == ("cache", "exported")
    assert [intact(p) for p in cache_files(onnx_cache, "decoder-step")] == [True]

    for damage in (lambda data: data[:len(data) // 2],  # truncated
                   lambda data: data[:-64] + bytes(64)):  # same size, last bytes zeroed
        path.write_bytes(damage(path.read_bytes()))
        rebuilt = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
        assert rebuilt.pipeline.onnx.origin == "exported"
        [path] = cache_files(onnx_cache)
        assert intact(path)
        assert_same_results(reference, rebuilt(photo))


@needs_onnxruntime
def test_the_decoder_step_runs_in_onnx_runtime_and_the_torch_model_is_left_as_it_is(tiny_model_dir, onnx_cache,
                                                                                     one_thread):
    from captioner.core.backends.onnx_runtime import OnnxDecoderStep

    reference = load_model(tiny_model_dir, CPU).model.decoder
    captioner = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
    step = captioner.pipeline.onnx.steps.step
    assert isinstance(step, OnnxDecoderStep)
    assert not isinstance(captioner.model.decoder.step, OnnxDecoderStep)  # gradients still flow through torch
    torch.manual_seed(0)
    inputs = torch.randn(3, reference.lstm.input_size)
    with torch.inference_mode():
        expected, (hidden, cell) = reference.step(inputs)
        found, (found_hidden, found_cell) = step(inputs)
        assert not found.requires_grad
        for a, b in ((expected, found), (hidden, found_hidden), (cell, found_cell)):
            assert torch.allclose(a, b, atol=1e-5)
        again, _ = step(inputs, (hidden, cell))
        assert torch.allclose(again, reference.step(inputs, (hidden, cell))[0], atol=1e-5)


@needs_onnxruntime
def test_the_cache_key_holds_the_weights(tmp_path, onnx_cache, one_thread):
    for seed in (0, 1):
        model, vocab = make_tiny_model(seed=seed)
        assert Captioner(load_model(save_model(model, vocab, tmp_path / f"m{seed}"), CPU), CPU,
                         "onnx").pipeline.onnx.origin == "exported"
    assert len(cache_files(onnx_cache)) == 2


@pytest.mark.slow
@needs_onnxruntime
def test_a_shipped_export_is_used_only_for_its_own_weights(tiny_model_copy, tmp_path, onnx_cache, example_photos,
                                                          one_thread):
    shipped = export_to_repo(tiny_model_copy)
    assert shipped == [tiny_model_copy / SHIPPED_EXPORT, tiny_model_copy / SHIPPED_STEP]
    assert sorted(p.name for p in (tiny_model_copy / "onnx").iterdir()) == ["decoder_step.onnx", "encoder_model.onnx"]
    captioner = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx")
    assert (captioner.pipeline.onnx.origin, captioner.pipeline.onnx.path) == ("shipped", shipped[0])
    assert (captioner.pipeline.onnx.step_origin, captioner.pipeline.onnx.step_path) == ("shipped", shipped[1])
    assert list(onnx_cache.glob("*")) == []  # neither graph was exported
    photo = example_photos["coffee"]
    assert_same_results(Captioner(load_model(tiny_model_copy, CPU), CPU, "torch")(photo, beam_size=3),
                        captioner(photo, beam_size=3))

    model, vocab = make_tiny_model(seed=7)  # other weights, the first model's export beside them
    other = save_model(model, vocab, tmp_path / "other")
    shutil.copytree(tiny_model_copy / "onnx", other / "onnx")
    with pytest.warns(UserWarning) as caught:
        refused = Captioner(load_model(other, CPU), CPU, "onnx")
    messages = [str(w.message) for w in caught]
    for name, what in (("encoder_model", "backbone"), ("decoder_step", "decoder step")):
        assert any(re.search(rf"refusing .*{name}\.onnx: its recorded weights_sha256 do not match .*; using the "
                             rf"cached or a fresh export of the {what} instead", m) for m in messages), messages
    assert (refused.pipeline.onnx.origin, refused.pipeline.onnx.step_origin) == ("exported", "exported")
    assert_same_results(Captioner(load_model(other, CPU), CPU, "torch")(photo, beam_size=3),
                        refused(photo, beam_size=3))

    (other / SHIPPED_EXPORT).write_bytes(b"not an onnx file")
    with pytest.warns(UserWarning) as caught:
        assert Captioner(load_model(other, CPU), CPU, "onnx").pipeline.onnx.origin == "cache"
    assert [str(w.message).split(": ")[0].split(" ")[0] for w in caught] == [
        str(other / SHIPPED_EXPORT), "refusing"]  # the backbone's file is no graph; the step's is the other model's
    assert "is not a usable ONNX file" in str(caught[0].message)


@needs_onnxruntime
def test_a_shipped_graph_must_fit_the_model_it_is_used_for(tiny_model_copy, onnx_cache, one_thread):
    export_to_repo(tiny_model_copy)
    encoder, step = tiny_model_copy / SHIPPED_EXPORT, tiny_model_copy / SHIPPED_STEP
    step.write_bytes(encoder.read_bytes())  # the right weights' metadata, the wrong graph
    with pytest.warns(UserWarning, match=r"refusing .*decoder_step\.onnx: it maps \['pixels'\] to \['features'\], "
                                         r"not \['inputs', 'hidden', 'cell'\]"):
        captioner = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx")
    assert (captioner.pipeline.onnx.origin, captioner.pipeline.onnx.step_origin) == ("shipped", "exported")

    config = json.loads((tiny_model_copy / "config.json").read_text())
    (tiny_model_copy / "config.json").write_text(json.dumps({**config, "image_size": 192}))  # same weights
    step.unlink()
    with pytest.warns(UserWarning, match=r"encoder_model\.onnx: its input pixels has dimensions \[None, 3, 224, "
                                         r"224\], this model needs \[None, 3, 192, 192\]"):
        captioner = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx")
    assert captioner.pipeline.onnx.origin == "exported"
    assert captioner.pipeline.features(torch.zeros(2, 3, 192, 192)).shape[0] == 2


@needs_onnxruntime
def test_backend_choice(tiny_model_dir, onnx_cache, monkeypatch):
    monkeypatch.delenv("CAPTIONER_BACKEND", raising=False)
    auto = load_captioner(tiny_model_dir, "cpu")
    assert auto.backend == "onnx" and auto.info["backend"] == "onnx"  # auto on CPU with onnxruntime installed
    assert load_captioner(tiny_model_dir, "cpu", "auto") is auto
    assert load_captioner(tiny_model_dir, "cpu", "onnx") is auto
    forced = load_captioner(tiny_model_dir, "cpu", "torch")
    assert forced.backend == "torch" and forced is not auto
    monkeypatch.setenv("CAPTIONER_BACKEND", "torch")
    assert load_captioner(tiny_model_dir, "cpu") is forced
    monkeypatch.setenv("CAPTIONER_BACKEND", "tensorrt")
    with pytest.raises(CaptionerError, match="unknown backend 'tensorrt': use one of auto, torch, onnx"):
        load_captioner(tiny_model_dir, "cpu")
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("auto", torch.device("mps")) == "torch"
    with pytest.raises(BackendUnavailable, match="runs on the CPU"):
        resolve_backend("onnx", torch.device("cuda"))


@needs_onnxruntime
def test_one_session_shared_by_many_threads(tiny_model_dir, onnx_cache, example_photos):
    captioner = Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")
    sessions = {captioner.pipeline.onnx.session: torch.get_num_threads(), captioner.pipeline.onnx.steps.step.session: 1}
    for session, threads in sessions.items():  # the small decoder step runs on the calling thread
        options = session.get_session_options()
        assert options.intra_op_num_threads == threads
        # threads spin within a run only: spinning after it slows the torch work between runs
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    photos = list(example_photos.values()) * 3
    expected = [captioner(photo) for photo in photos]
    session = captioner.pipeline.onnx.session
    with ThreadPoolExecutor(8) as pool:
        assert [r.caption for r in pool.map(captioner, photos)] == [r.caption for r in expected]
        shared = SharedCaptioner(captioner, max_batch_size=4)
        found = list(pool.map(shared.caption, photos))
    for reference, result in zip(expected, found):
        assert_same_results(reference, result)
    assert captioner.pipeline.onnx.session is session


HIDE = textwrap.dedent("""
    import sys

    class Hide:  # as if the package were not installed
        def find_spec(self, name, path=None, target=None):
            if name == HIDDEN or name.startswith(HIDDEN + "."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Hide())
""")


def run_without(package: str, code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"HIDDEN = {package!r}\n" + HIDE + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**_env(), "CAPTIONER_CACHE": str(tmp_path / "cache")})


def _env() -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items() if key not in ("CAPTIONER_BACKEND", "CAPTIONER_DEVICE")}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])
def test_without_onnxruntime_or_the_exporter_auto_uses_torch(package, tiny_model_dir, tmp_path):
    done = run_without(package, f"""
        from captioner.core.inference import load_captioner
        captioner = load_captioner({str(tiny_model_dir)!r}, "cpu")
        print(captioner.backend, captioner({str(ROOT / "examples" / "coffee.jpg")!r}).candidates[0].score < 0)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torch", "True"]


@pytest.mark.slow
def test_without_onnxruntime_the_onnx_backend_says_what_to_install(tiny_model_dir, tmp_path):
    done = run_without("onnxruntime", f"""
        from captioner.cli import main
        sys.exit(main(["caption", {str(ROOT / "examples" / "coffee.jpg")!r}, "--model", {str(tiny_model_dir)!r},
                       "--backend", "onnx"]))
    """, tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: the onnx backend needs the 'onnx' extra (onnxruntime is not installed): pip install 'captioner[onnx]'"]


@pytest.mark.slow
def test_without_onnxruntime_the_app_refuses_the_onnx_backend_at_start(tmp_path):
    done = run_without("onnxruntime", """
        from captioner.web.main import main
        main(["--backend", "onnx"])
    """, tmp_path)
    assert done.returncode == 2  # argparse's usage error, before any model is loaded or server started
    assert done.stderr.splitlines()[-1].endswith(
        "error: the onnx backend needs the 'onnx' extra (onnxruntime is not installed): pip install 'captioner[onnx]'")


@pytest.mark.slow
@needs_onnxruntime
def test_cli_backend_flag(tiny_model_dir, tmp_path):
    env = {**_env(), "CAPTIONER_CACHE": str(tmp_path / "cache")}
    photo = str(ROOT / "examples" / "coffee.jpg")
    captions = {}
    for backend in ("torch", "onnx"):
        done = subprocess.run([sys.executable, "-m", "captioner", "caption", photo, "--model", str(tiny_model_dir),
                               "--backend", backend, "--json"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        captions[backend] = json.loads(done.stdout)
    mine, theirs = captions["torch"], captions["onnx"]
    assert theirs["caption"] == mine["caption"] and theirs["image"] == mine["image"] == photo
    assert theirs["candidates"][0]["score"] == pytest.approx(mine["candidates"][0]["score"], abs=1e-4)
    cache = tmp_path / "cache" / "onnx"
    assert len(cache_files(cache)) == len(cache_files(cache, "decoder-step")) == 1
    done = subprocess.run([sys.executable, "-m", "captioner", "caption", photo, "--backend", "tvm"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "invalid choice: 'tvm'" in done.stderr


@needs_onnxruntime
def test_the_onnx_backend_reads_the_torch_backbone_only_when_asked(tiny_model_dir, onnx_cache, example_photos):
    """``load_captioner`` with the ONNX backend defers the torch backbone: with the export cached it is
    never built, and an explanation (which needs it) builds it once, with the model file's weights."""
    photo = example_photos["coffee"]
    reference = Captioner(load_model(tiny_model_dir, CPU), CPU, "torch")
    Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")  # exports into the cache
    inference._cache.clear()
    captioner = load_captioner(tiny_model_dir, "cpu", "onnx")
    encoder = captioner.model.encoder
    assert captioner.pipeline.onnx.origin == "cache" and encoder.backbone is None
    assert_same_results(reference(photo), captioner(photo))
    assert encoder.backbone is None
    with ThreadPoolExecutor(4) as pool:
        backbones = list(pool.map(lambda _: encoder.require_backbone(), range(8)))
    assert all(backbone is backbones[0] for backbone in backbones)
    for name, tensor in load_model(tiny_model_dir, CPU).model.encoder.backbone.state_dict().items():
        assert torch.equal(backbones[0].state_dict()[name], tensor), name
    explained = captioner.explain(photo)
    assert explained.caption == reference.explain(photo).caption
    inference._cache.clear()


def test_a_deferred_backbone_checks_the_weights_when_it_is_built(tiny_model_copy):
    loaded = load_model(tiny_model_copy, CPU, defer_backbone=True)
    assert not any(name.startswith("encoder.backbone.") for name in loaded.model.state_dict())
    (tiny_model_copy / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="SHA-256|not a valid"):
        loaded.model.encoder.require_backbone()
    assert loaded.model.encoder.backbone is None


@pytest.mark.slow
def test_without_the_exporter_a_shipped_or_cached_export_still_runs_in_onnx_runtime(tiny_model_dir, tiny_model_copy,
                                                                                    tmp_path, monkeypatch, one_thread):
    from captioner.core.backends.onnx_export import EXPORTER_HINT

    export_to_repo(tiny_model_copy)
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))  # the cache the subprocess uses
    Captioner(load_model(tiny_model_dir, CPU), CPU, "onnx")  # both graphs of this one are cached now
    unexported = save_model(*make_tiny_model(seed=9), tmp_path / "unexported")
    photo = str(ROOT / "examples" / "coffee.jpg")
    done = run_without("onnx", f"""
        import json
        from captioner.core.inference import load_captioner
        answers = []
        for model in {[str(tiny_model_copy), str(tiny_model_dir), str(unexported)]!r}:
            captioner = load_captioner(model, "cpu")
            onnx = captioner.pipeline.onnx
            result = captioner({photo!r}, beam_size=3)
            answers.append([captioner.backend, onnx and onnx.origin, onnx and onnx.step_origin, result.caption,
                            result.candidates[0].score])
        print(json.dumps(answers))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr  # the exporter's absence is the rule, not a fault
    answers = json.loads(done.stdout)
    assert [answer[:3] for answer in answers] == [["onnx", "shipped", "shipped"], ["onnx", "cache", "cache"],
                                                  ["torch", None, None]]
    for model, answer in zip((tiny_model_copy, tiny_model_dir, unexported), answers):
        reference = Captioner(load_model(model, CPU), CPU, "torch")(photo, beam_size=3)
        assert answer[3] == reference.caption and answer[4] == pytest.approx(reference.candidates[0].score, abs=1e-4)

    done = run_without("onnx", f"""
        from captioner.cli import main
        sys.exit(main(["caption", {photo!r}, "--model", {str(unexported)!r}, "--backend", "onnx"]))
    """, tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"error: {EXPORTER_HINT}"]


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before it runs Python: no file over ``limit`` bytes can be written
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
@needs_onnxruntime
@pytest.mark.skipif(sys.platform == "win32", reason="file size limits are a POSIX resource limit")
def test_auto_falls_back_to_torch_when_the_export_cannot_be_written(tiny_model_dir, tmp_path):
    """The cache is a file, and no file as large as the backbone's graph (about 13 MB) may be written
    anywhere (a quota): the graph cannot be made. ``auto`` says so and captions with torch;
    ``--backend onnx`` stops with one line."""
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    photo = str(ROOT / "examples" / "coffee.jpg")
    command = [sys.executable, "-m", "captioner", "caption", photo, "--model", str(tiny_model_dir), "--json"]
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**_env(), "CAPTIONER_CACHE": str(blocked)}, preexec_fn=_file_size_limit(2 ** 20))
    expected = Captioner(load_model(tiny_model_dir, CPU), CPU, "torch")(photo)

    auto = run(command)
    assert auto.returncode == 0, auto.stderr
    found = json.loads(auto.stdout)
    assert found["caption"] == expected.caption
    assert found["candidates"][0]["score"] == pytest.approx(expected.candidates[0].score, abs=1e-5)
    reason = (f"could not write the ONNX export of efficientnet-lite0: not to the cache {blocked / 'onnx'} "
              "(Not a directory), nor to a temporary folder (File too large)")
    assert f"UserWarning: the ONNX Runtime backend could not start (CaptionerError: {reason}); using torch" \
        in auto.stderr

    forced = run([*command, "--backend", "onnx"])
    assert (forced.returncode, forced.stdout) == (1, "")
    assert forced.stderr.splitlines() == [f"error: {reason}"]


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **{"env": _env(), **kwargs})


@pytest.mark.slow
@needs_onnxruntime
def test_the_export_onnx_command_writes_both_graphs(tiny_model_copy, onnx_cache, one_thread):
    done = _cli("export-onnx", str(tiny_model_copy))
    assert done.returncode == 0, done.stderr
    folder = tiny_model_copy / "onnx"
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("encoder_model.onnx", "decoder_step.onnx")):
        assert re.fullmatch(rf"wrote {re.escape(str(folder / name))} \(\d+\.\d MB\)", line), line
    assert sorted(path.name for path in folder.iterdir()) == ["decoder_step.onnx", "encoder_model.onnx"]
    captioner = Captioner(load_model(tiny_model_copy, CPU), CPU, "onnx")
    assert (captioner.pipeline.onnx.origin, captioner.pipeline.onnx.step_origin) == ("shipped", "shipped")


@pytest.mark.slow
def test_the_export_onnx_command_refuses_in_one_line(tiny_model_copy, tmp_path):
    def error_of(done: subprocess.CompletedProcess) -> str:
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        [line] = done.stderr.splitlines()
        return line

    nowhere, empty = tmp_path / "nowhere", tmp_path / "empty"
    assert error_of(_cli("export-onnx", str(nowhere))) == f"error: no model directory {str(nowhere)!r}"
    empty.mkdir()
    assert error_of(_cli("export-onnx", str(empty))).startswith(f"error: {empty / 'config.json'}")
    done = run_without("onnx", f"""
        from captioner.cli import main
        sys.exit(main(["export-onnx", {str(tiny_model_copy)!r}]))
    """, tmp_path)
    assert error_of(done) == ("error: export-onnx needs the 'onnx' extra (onnx is not installed): "
                              "pip install 'captioner[onnx]'")
    if not onnxruntime_available() or importlib.util.find_spec("onnx") is None:
        return
    (tiny_model_copy / "onnx").write_text("a file where the folder goes")
    assert error_of(_cli("export-onnx", str(tiny_model_copy))) == (
        f"error: cannot write the ONNX export into {tiny_model_copy / 'onnx'}: it is a file, not a folder")


def _without_root_powers() -> None:
    """In the child, before it runs Python: root keeps its uid but loses the capabilities that let it write
    where permissions say no (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as an ordinary user would be."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone once Python is exec'd
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or importlib.util.find_spec("onnx") is None,
                    reason="POSIX permissions and Linux capabilities; the exporter is needed")
@pytest.mark.slow
def test_the_export_onnx_command_in_a_read_only_folder(tiny_model_copy):
    """A folder the user may read but not write: one line, and nothing left behind."""
    import os

    before = sorted(path.name for path in tiny_model_copy.iterdir())
    tiny_model_copy.chmod(0o555)
    try:
        try:
            done = _cli("export-onnx", str(tiny_model_copy),
                        preexec_fn=_without_root_powers if os.geteuid() == 0 else None)
        except subprocess.SubprocessError as error:  # a container that may not drop capabilities
            pytest.skip(f"cannot run the command without root's powers here: {error}")
    finally:
        tiny_model_copy.chmod(0o755)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr.splitlines() == [f"error: cannot write the ONNX export into {tiny_model_copy / 'onnx'}: "
                                        "Permission denied"]
    assert sorted(path.name for path in tiny_model_copy.iterdir()) == before
