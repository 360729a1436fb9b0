"""The real app on a free port, driven through its API with gradio_client."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from captioner.core.inference import load_captioner
from tests.helpers.app import APP_MODEL_TEMPERATURE, app, free_port, serve
from tests.helpers.cli import run
from tests.helpers.paths import ROOT

EXAMPLE = ROOT / "examples" / "coffee.jpg"
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio 6.31, with pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def running_app(app_model):
    built = app.build_app(app_model)
    with serve(built) as url:
        yield built.state, Client(url, verbose=False)


def expected(model_dir, image, **options):
    options = {"beam_size": 3, "num_candidates": 3, **options}
    return load_captioner(model_dir, "cpu")(image, **options)


@pytest.mark.slow
def test_caption_endpoint_returns_the_structured_result(running_app, app_model):
    _, client = running_app
    result = client.predict(handle_file(EXAMPLE), api_name="/caption")
    want = expected(app_model, EXAMPLE)
    assert result["caption"] and result["caption"] == want.caption
    assert [c["caption"] for c in result["candidates"]] == [c.caption for c in want.candidates]
    assert len(result["candidates"]) == 3
    assert result["calibrated"] is True and result["confidence"] == result["candidates"][0]["confidence"]
    for candidate, wanted in zip(result["candidates"], want.candidates):
        assert 0 <= candidate["confidence"] <= 1 and candidate["calibrated"] is True
        assert candidate["confidence"] == pytest.approx(wanted.confidence)  # the library's, as the CLI's
        assert candidate["confidence"] == pytest.approx(min(1, math.exp(candidate["score"] / APP_MODEL_TEMPERATURE)))
    assert [w["word"] for w in result["words"]] == result["caption"].split()
    assert result["top_classes"][0]["label"] in ("espresso", "cup")
    assert result["model"] == str(app_model)


def test_decoding_options_reach_the_model(running_app, app_model):
    _, client = running_app
    greedy = client.predict(handle_file(EXAMPLE), beam_size=1, max_length=5, api_name="/caption")
    want = expected(app_model, EXAMPLE, beam_size=1, num_candidates=1, max_length=5)
    assert greedy["caption"] == want.caption and len(greedy["caption"].split()) <= 5
    assert len(greedy["candidates"]) == 1


def test_when_unsure_reaches_the_model_and_a_bad_value_is_refused(running_app, app_model):
    _, client = running_app
    kept = client.predict(handle_file(EXAMPLE), when_unsure="keep", api_name="/caption")
    want = expected(app_model, EXAMPLE, when_unsure="keep").to_dict()
    want.pop("image")
    assert _rounded(kept) == _rounded(want)
    with pytest.raises(AppError, match="when_unsure must be one of generalise, keep"):
        client.predict(handle_file(EXAMPLE), when_unsure="maybe", api_name="/caption")


def test_cli_json_web_api_and_batch_json_give_the_same_result(running_app, app_model, tmp_path):
    """One schema everywhere: the same fields and values for the same image and options."""
    from captioner.core.options import DecodeOptions
    from captioner.web.batch import caption_inputs, collect_inputs, rows_to_json

    _, client = running_app
    photo = shutil.copy(EXAMPLE, tmp_path / "photo.jpg")
    cli = run("caption", "--json", "--model", app_model, "--device", "cpu", "--beam-size", "2",
              "--num-candidates", "1", "--max-length", "6", photo)
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    from_api = client.predict(handle_file(photo), beam_size=2, num_candidates=1, max_length=6, api_name="/caption")
    captioner = load_captioner(app_model, "cpu")
    [from_batch] = json.loads(rows_to_json(caption_inputs(captioner, collect_inputs([photo]),
                                                         DecodeOptions(beam_size=2, num_candidates=1, max_length=6))))
    assert from_cli["image"] == str(photo) and from_batch["image"] == "photo.jpg" and "image" not in from_api
    for result in (from_cli, from_api, from_batch):
        result.pop("image", None)
    assert set(from_cli) == set(from_api) == set(from_batch) == {"caption", "confidence", "calibrated", "candidates",
                                                                 "words", "top_classes", "model"}
    for other in (from_api, from_batch):
        assert json.dumps(_rounded(other), sort_keys=True) == json.dumps(_rounded(from_cli), sort_keys=True)


def _rounded(value):
    """Floats to 5 significant digits: the three paths run the same model in different processes."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_examples_are_captioned_at_start_up(running_app):
    state, client = running_app
    passes = state.shared.forward_passes
    client.predict(handle_file(ROOT / "examples" / "rocket.jpg"), api_name="/caption")
    assert state.shared.forward_passes == passes  # answered from memory: no model call


@pytest.mark.slow
def test_bad_uploads_get_clear_errors_and_the_server_keeps_serving(running_app, tmp_path):
    _, client = running_app
    (tmp_path / "notes.jpg").write_text("this is not a photo")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(EXAMPLE.read_bytes()[:3000])
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(tmp_path / "notes.jpg"), api_name="/caption")
    with pytest.raises(AppError, match="truncated or corrupt"):
        client.predict(handle_file(truncated), api_name="/caption")
    from PIL import Image

    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 megapixels in a file of a few KB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(AppError, match="image is too large"):
        client.predict(handle_file(tmp_path / "bomb.png"), api_name="/caption")
    with pytest.raises(AppError, match="beam_size"):
        client.predict(handle_file(EXAMPLE), beam_size=0, api_name="/caption")
    assert client.predict(handle_file(EXAMPLE), api_name="/caption")["caption"]


def test_concurrent_requests_succeed_and_a_bad_one_fails_alone(running_app, app_model, tmp_path):
    state, client = running_app
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    photos = sorted((ROOT / "examples").glob("*.jpg"))
    jobs = [photos[i % len(photos)] for i in range(8)] + [tmp_path / "broken.png"]

    def call(path):  # max_length=9: not among the remembered example results, so the model runs
        try:
            return client.predict(handle_file(path), max_length=9, api_name="/caption")
        except AppError as error:
            return error

    passes = state.shared.forward_passes
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    assert isinstance(results[-1], AppError) and "corrupt" in str(results[-1])
    for path, result in zip(jobs[:-1], results[:-1]):
        assert result["caption"] == expected(app_model, path, max_length=9).caption
    assert state.shared.forward_passes > passes


@pytest.mark.slow
def test_without_any_model_the_app_starts_and_says_why(tmp_path):
    built = app.build_app(tmp_path / "no-such-model", bundled=None, examples_dir=tmp_path)
    assert built.state.shared is None
    with serve(built) as url:
        with pytest.raises(AppError, match="No model is available"):
            Client(url, verbose=False).predict(handle_file(EXAMPLE), api_name="/caption")
        with urllib.request.urlopen(f"{url}config") as response:
            config = json.load(response)
    notice = next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "model-notice")
    assert notice["visible"] is True
    assert "No model is available" in notice["value"] and "no-such-model" in notice["value"]


def test_a_model_that_fails_falls_back_to_the_bundled_one(tmp_path, tiny_model_dir):
    demo, state = app.build_app(tmp_path / "missing", bundled=tiny_model_dir, examples_dir=tmp_path)
    assert state.shared is not None
    assert state.shared.captioner.info["path"] == str(tiny_model_dir)
    notice = component(demo, "model-notice")
    assert notice.visible and "could not be loaded" in notice.value and "bundled model is shown instead" in notice.value


def component(demo, elem_id):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_top_classes_show_only_for_class_log_prob_encoders(tmp_path, tiny_model_dir, app_model):
    assert not component(app.build_demo(tiny_model_dir, examples_dir=tmp_path), "top-classes").visible
    assert component(app.build_demo(app_model, examples_dir=tmp_path), "top-classes").visible


def test_model_panel_shows_the_card_summary_and_limits(tmp_path, tiny_model_copy):
    (tiny_model_copy / "README.md").write_text(
        "---\nlibrary_name: captioner\nlicense: apache-2.0\n---\n# Tiny captioner\n\n"
        "Writes short captions about cups.\n\n## Training\nSynthetic.\n\n"
        "## Limitations\nIt only knows twenty words.\n", encoding="utf-8")
    panel = component(app.build_demo(tiny_model_copy, examples_dir=tmp_path), "model-panel").value
    assert "Writes short captions about cups." in panel and "It only knows twenty words." in panel
    assert "library_name" not in panel and "Synthetic." not in panel
    assert "efficientnet-lite0" in panel and "CAPTIONER_MODEL" in panel and "--model" in panel


def test_importing_app_builds_nothing_and_demo_is_built_on_first_use(monkeypatch, tiny_model_dir):
    assert "demo" not in vars(app)
    monkeypatch.setenv("CAPTIONER_MODEL", str(tiny_model_dir))
    try:
        panel = component(app.demo, "model-panel").value
        assert str(tiny_model_dir) in panel
    finally:
        vars(app).pop("demo", None)


@pytest.mark.slow
def test_python_app_py_serves_on_the_configured_address(tiny_model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "CAPTIONER_MODEL": str(tmp_path / "not-this-one")}
    log = open(tmp_path / "app.log", "w+")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(tiny_model_dir)], cwd=tmp_path,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = json.load(response)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"app.py exited:\n{(tmp_path / 'app.log').read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail("app.py did not answer within 120 s")
                time.sleep(0.5)
        panel = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "model-panel")
        assert str(tiny_model_dir) in panel  # --model wins over CAPTIONER_MODEL
        result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(EXAMPLE), api_name="/caption")
        assert result["model"] == str(tiny_model_dir)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert not (tmp_path / ".gradio" / "cached_examples").exists()  # examples are remembered in memory


@pytest.mark.slow
def test_gallery_lists_the_photos_in_the_examples_folder_and_leaves_out_broken_ones(tmp_path, tiny_model_dir):
    import gradio as gr

    shutil.copy(ROOT / "examples" / "coffee.jpg", tmp_path / "my-own-still.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    demo = app.build_demo(tiny_model_dir, examples_dir=tmp_path)
    [gallery] = [block for block in demo.blocks.values() if isinstance(block, gr.Dataset)]
    assert [sample[0]["orig_name"] for sample in gallery.samples] == ["my-own-still.jpg"]


@pytest.mark.slow
def test_confidence_is_shown_in_words_and_numbers_that_mean_what_the_json_means(app_model, tiny_model_dir):
    from captioner.web.honesty import caption_details, confidence_text

    assert [confidence_text(p) for p in (0.72, 0.7, 0.55, 0.4, 0.18, None)] == [
        "likely 72%", "likely 70%", "maybe 55%", "maybe 40%", "unsure 18%", "not calibrated"]
    calibrated = load_captioner(app_model, "cpu")(EXAMPLE)
    details = caption_details(calibrated, emits_classes=True)
    assert f"<strong>{confidence_text(calibrated.confidence)}</strong> that this caption is right" in details
    assert "1000 kinds of animals, objects and places" in details and "cannot describe actions, counts" in details
    assert "import-legacy --download" in details and "python -m captioner train" in details
    plain = load_captioner(tiny_model_dir, "cpu")(EXAMPLE)
    details = caption_details(plain, emits_classes=False)
    assert "not calibrated" in details and "%" not in details and "1000 kinds" not in details
