"""caption-dataset on Ray Data and the caption service on Ray Serve, on a real local Ray cluster
(2 CPUs, started once for this module and always shut down), with the bundled model and real photos."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='needs Ray: pip install "captioner[ray]"')
pytestmark = pytest.mark.slow
# The test cluster's own token, not the machine's shared ~/.ray/auth_token: set before any test uses
# Ray (a process reads its token once), and handed to the drivers the tests start.
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex})


def _env() -> dict[str, str]:
    """For subprocesses: this checkout's captioner, and the test cluster's token (set by ``cluster``)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_without_ray_both_commands_say_what_to_install():
    script = ("import sys; sys.modules['ray'] = None\n"  # what an environment without Ray looks like to imports
              "from captioner.cli import main\n"
              "codes = [main(['caption-dataset', 'photos', '--out', 'out']), main(['serve'])]\n"
              "sys.exit(0 if codes == [1, 1] else 3)")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") and "needs the 'ray' extra" in line and "captioner[ray]" in line
               for line in lines), lines
    assert "Traceback" not in run.stderr


# --- fixtures: photos, the single-process CLI's answers, one cluster ---------------------------

def _variations(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    return [image, ImageOps.mirror(image), image.rotate(90, expand=True),
            image.crop((width // 8, height // 8, width * 7 // 8, height * 7 // 8)),
            ImageEnhance.Brightness(image).enhance(0.6), image.resize((width // 2, height // 2))]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """A folder tree of 40 real photos (the examples, and scikit-image photos with generated
    variations) and 3 broken files: (folder, good files, broken files)."""
    import skimage.data

    root = tmp_path_factory.mktemp("collection")
    good = []
    (root / "examples").mkdir()
    for path in sorted(EXAMPLES.glob("*.jpg")):
        good.append(Path(root / "examples" / path.name))
        good[-1].write_bytes(path.read_bytes())
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field"):
        folder = root / "generated" / name
        folder.mkdir(parents=True)
        for index, image in enumerate(_variations(Image.fromarray(np.asarray(getattr(skimage.data, name)())))):
            if len(good) == 40:
                break
            path = folder / f"{name}-{index}.{'png' if index % 3 == 2 else 'jpg'}"
            image.convert("RGB").save(path)
            good.append(path)
    assert len(good) == 40
    broken = root / "broken"
    broken.mkdir()
    (broken / "notes.jpg").write_text("not a photo, just text\n")
    (broken / "truncated.jpg").write_bytes((EXAMPLES / "rocket.jpg").read_bytes()[:2000])
    (broken / "empty.png").write_bytes(b"")
    return root, good, sorted(broken.iterdir())


@pytest.fixture(scope="module")
def cli_results(photos) -> dict[str, dict]:
    """What the single-process ``caption --json`` command says about every file, by path."""
    _, good, broken = photos
    run = subprocess.run([sys.executable, "-m", "captioner", "caption", "--json", *map(str, good + broken)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr  # 1: some files could not be captioned
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == 43
    return {result["image"]: result for result in results}


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local 2-CPU Ray cluster for this module; always shut down (Serve included). Yields its address."""
    if not HAS_RAY:
        pytest.skip('needs Ray: pip install "captioner[ray]"')
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "captioner", *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


# --- caption-dataset --------------------------------------------------------------------------

@needs_ray
def test_caption_dataset_matches_the_cli_and_resume_does_no_model_work(cluster, photos, cli_results, tmp_path):
    from captioner.core.inference import load_captioner
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, broken = photos
    out = tmp_path / "captions"
    run = caption_dataset(root, out, workers=2, batch_size=4, rows_per_part=10)
    assert (run.inputs, run.captioned, run.failed, run.parts, run.workers) == (43, 43, 3, 5, 2)
    assert run.backends == (load_captioner(None, "cpu").backend,)  # the workers' auto chose as this process does
    rows = read_results(out)
    assert len(rows) == 43
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in good + broken)
    by_path = {row["path"]: row for row in rows}
    for path in good:
        row, expected = by_path[str(path)], cli_results[str(path)]
        assert row["error"] is None
        assert row["caption"] == expected["caption"], path
        assert [c["caption"] for c in row["candidates"]] == [c["caption"] for c in expected["candidates"]]
        assert row["confidence"] == pytest.approx(expected["candidates"][0]["confidence"], rel=1e-4)
        assert row["model"] == expected["model"]
    assert len({by_path[str(path)]["caption"] for path in good}) > 5  # the photos get different captions
    for path in broken:
        assert by_path[str(path)]["caption"] is None
        assert by_path[str(path)]["error"] == cli_results[str(path)]["error"]
    assert {by_path[str(path)]["error"] for path in broken} == {
        "not an image (it is a text file)", "truncated or corrupt image", "empty file"}

    parts = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    again = caption_dataset(root, out, resume=True)
    assert (again.skipped, again.captioned, again.parts, again.workers) == (43, 0, 0, 0)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == parts
    with pytest.raises(Exception, match="--resume"):  # an OUT with results is not written over by accident
        caption_dataset(root, out)


@needs_ray
def test_a_killed_job_resumed_ends_with_every_input_once(cluster, photos, cli_results, tmp_path):
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, broken = photos
    out = tmp_path / "captions.jsonl"
    job = _cli("caption-dataset", str(root), "--out", str(out), "--address", cluster, "--workers", "1",
               "--batch-size", "1", "--rows-per-part", "2", start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.jsonl")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the driver and anything it started, mid-job
        job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read()[-3000:]
    before = read_results(out)
    assert 0 < len(before) < 43, "the job should have been stopped midway"
    assert all(path.name.startswith(("part-", ".tmp-part-")) for path in out.iterdir())

    run = caption_dataset(root, out, resume=True, workers=1)
    assert run.skipped == len(before) and run.captioned == 43 - len(before)
    assert all(path.name.startswith("part-") for path in out.iterdir())  # half-written parts are gone
    rows = read_results(out)
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in good + broken)  # each exactly once
    for row in rows:
        expected = cli_results[row["path"]]
        assert (row["caption"], row["error"]) == (expected.get("caption"), expected.get("error"))


@needs_ray
def test_a_table_of_paths_and_clear_refusals(cluster, photos, cli_results, tmp_path, capsys):
    from captioner.cli import main
    from captioner.core.errors import CaptionerError
    from captioner.serving.ray_data import caption_dataset, read_results

    root, good, _ = photos
    table = root / "list.csv"
    chosen = good[:3]
    table.write_text("file,note\n" + "".join(f"{path.relative_to(root)},x\n" for path in chosen)
                     + "examples/missing.jpg,gone\n")
    with pytest.raises(CaptionerError, match="no column 'path'.*file"):
        caption_dataset(table, tmp_path / "a")
    with pytest.raises(CaptionerError, match="GPUs"):  # never wait forever for GPUs that are not there
        caption_dataset(table, tmp_path / "b", path_column="file", gpus_per_worker=1)
    with pytest.raises(ValueError, match="beam_size"):
        from captioner.core.options import DecodeOptions

        caption_dataset(table, tmp_path / "c", path_column="file", options=DecodeOptions(beam_size=0))
    with pytest.raises(CaptionerError, match="unknown backend 'tvm'"):
        caption_dataset(table, tmp_path / "e", path_column="file", backend="tvm")
    with pytest.raises(SystemExit):
        main(["caption-dataset", str(table), "--out", str(tmp_path / "f"), "--backend", "tvm"])
    assert "invalid choice: 'tvm'" in capsys.readouterr().err
    assert main(["caption-dataset", str(table), "--out", str(tmp_path / "d.jsonl"), "--path-column", "file",
                 "--workers", "1", "--backend", "torch"]) == 0  # auto would be onnx on these CPU workers
    [summary] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("captioned ")]
    assert summary.startswith("captioned 3 of 4 images (1 could not be read: see the error column) (torch backend); "
                              "wrote 1 part file(s)"), summary
    rows = {row["path"]: row for row in read_results(tmp_path / "d.jsonl")}
    assert sorted(rows) == sorted([*map(str, chosen), str(root / "examples" / "missing.jpg")])
    assert rows[str(root / "examples" / "missing.jpg")]["error"].startswith("file not found")
    assert all(rows[str(path)]["caption"] == cli_results[str(path)]["caption"] for path in chosen)


@needs_ray
def test_serve_settings_are_checked():
    from captioner.serving.ray_serve import build_app, decode_options

    with pytest.raises(ValueError, match="min_replicas"):
        build_app(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="unknown setting 'replica'"):
        build_app(replica=2)
    with pytest.raises(ValueError, match="max_batch_size must be a number of at least 1"):
        build_app(max_batch_size=0)
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        build_app(backend="tvm")
    with pytest.raises(ValueError, match="the onnx backend runs on the CPU"):
        build_app(backend="onnx", gpus_per_replica=1)
    assert decode_options({"beam_size": "1", "length_penalty": "0.5"}).beam_size == 1
    with pytest.raises(Exception, match="unknown query parameter 'beam'"):
        decode_options({"beam": "2"})


# --- the Serve application --------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(cluster) -> str:
    """The caption service on the module's cluster, on a free port; yields its URL."""
    from ray import serve

    from tests.helpers.app import free_port
    from captioner.serving.ray_serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(max_batch_size=8, batch_wait_ms=100, max_upload_mb=2, backend="torch"), name="captioner",
              route_prefix="/")  # torch: not the onnx that auto would choose on this CPU
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete("captioner")


@needs_ray
def test_concurrent_requests_share_forward_passes_and_get_their_own_captions(service, photos):
    import httpx

    from captioner.core.inference import load_captioner

    _, good, _ = photos
    chosen = good[::40 // 16][:16]
    expected = [result.caption for result in load_captioner(None)(chosen)]
    assert len(set(expected)) > 5

    def ask(index: int) -> dict:
        data = chosen[index].read_bytes()
        if index % 2:  # half as raw bodies, half as multipart uploads
            return httpx.post(f"{service}/v1/caption", content=data, timeout=300).json()
        return httpx.post(f"{service}/v1/caption", files={"image": (chosen[index].name, data)}, timeout=300).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert [answer.get("caption") for answer in answers] == expected
    assert set(answers[0]) == {"caption", "candidates", "words", "top_classes", "model"}
    health = httpx.get(f"{service}/healthz", timeout=60).json()
    assert health["status"] == "ok" and health["requests"] >= 16 and health["backend"] == "torch"
    assert health["largest_batch"] > 1  # at least one forward pass served several requests


@needs_ray
def test_bad_requests_get_the_librarys_message_and_the_next_one_succeeds(service, photos):
    import httpx

    from captioner.core.errors import ImageError
    from captioner.core.images.decode import load_image

    _, good, broken = photos
    for path in broken:
        with pytest.raises(ImageError) as raised:
            load_image(path.read_bytes())
        answer = httpx.post(f"{service}/v1/caption", files={"image": (path.name, path.read_bytes())}, timeout=60)
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"error": str(raised.value)}
    two = {"image": ("a.jpg", good[0].read_bytes()), "file": ("b.jpg", good[1].read_bytes())}
    answer = httpx.post(f"{service}/v1/caption", files=two, timeout=60)
    assert answer.status_code == 400, answer.text
    answer = httpx.post(f"{service}/v1/caption", files={"note": (None, "no file")}, timeout=60)
    assert answer.status_code == 400 and "no image was received" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption?beam_size=0", content=good[0].read_bytes(), timeout=60)
    assert answer.status_code == 422 and "beam_size must be a whole number from 1 to 50" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption", content=b"\xff\xd8\xff" + bytes(3 * 2 ** 20), timeout=60)
    assert answer.status_code == 413 and "limit 2.0 MB" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption?beam_size=1&max_length=5", content=good[0].read_bytes(), timeout=60)
    assert answer.status_code == 200
    assert len(answer.json()["candidates"]) == 1 and len(answer.json()["words"]) <= 5


@needs_ray
def test_the_mounted_gradio_app_loads_and_captions(service, photos):
    import httpx
    from gradio_client import Client, handle_file

    page = httpx.get(f"{service}/", timeout=60)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = httpx.get(f"{service}/config", timeout=60).json()
    assert config["title"] == "Show and Tell: image captioner"
    _, good, _ = photos
    client = Client(f"{service}/", verbose=False)
    result = client.predict(handle_file(str(good[0])), 3, 3, None, api_name="/caption")
    from captioner.core.inference import load_captioner

    assert result["caption"] == load_captioner(None)(good[0]).caption
