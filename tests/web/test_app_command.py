"""``python app.py`` as a newcomer runs it: ``--help`` answers without loading Gradio or the model
stack, and a model that cannot be loaded stops the app with a message unless a fallback is asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers.app import free_port
from tests.helpers.paths import ROOT


def run_app(*args: str, timeout: float = 300, **environ: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(free_port()), **environ}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_help_answers_without_importing_gradio_or_the_model_stack():
    started = time.monotonic()
    shown = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "app.py"), "--help"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
    seconds = time.monotonic() - started
    assert shown.returncode == 0 and "--fallback-to-bundled" in shown.stdout and "--model" in shown.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in shown.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported  # the import log is read right
    assert not imported & {"gradio", "torch", "numpy", "PIL", "fastapi", "uvicorn"}, sorted(imported)
    print(f"\npython app.py --help: {seconds:.2f} s, {len(imported)} top-level modules imported")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--model", "CAPTIONER_MODEL"])
def test_a_model_that_cannot_be_loaded_stops_the_app_with_a_message(how, tmp_path):
    missing = str(tmp_path / "no-such-folder")
    result = run_app("--model", missing) if how == "--model" else run_app(CAPTIONER_MODEL=missing)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("app.py: error:") and "no-such-folder" in last and "could not be loaded" in last
    assert "--fallback-to-bundled" in last and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_bad_setting_stops_the_app_with_a_message():
    result = run_app("--max-batch-size", "0")
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr
    result = run_app("--backend", "tpu")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--fallback-to-bundled", "CAPTIONER_FALLBACK_TO_BUNDLED"])
def test_asking_for_the_fallback_serves_the_bundled_model_and_says_so(how, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "CAPTIONER_MODEL": str(tmp_path / "no-such-folder")}
    args = [how] if how.startswith("--") else []
    if not how.startswith("--"):
        env[how] = "1"
    log = open(tmp_path / "app.log", "w+")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = json.load(response)
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "app.log").read_text()
                assert time.monotonic() < deadline, "app.py did not answer within 180 s"
                time.sleep(0.5)
        notice = next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "model-notice")
        assert notice["visible"] and "bundled model is shown instead" in notice["value"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    said = (tmp_path / "app.log").read_text()
    assert "no-such-folder" in said and "bundled model is shown instead" in said  # on the terminal too
