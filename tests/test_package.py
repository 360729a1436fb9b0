"""The package as users get it: a wheel that carries the bundled model, Python 3.10 compatibility and
one-line messages for missing extras (how its parts import each other: ``test_architecture.py``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "captioner"
COFFEE = ROOT / "examples" / "coffee.jpg"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPTIONER_MODEL", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1", **extra}


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout, installed into a fresh venv outside it. The venv sees
    this environment's dependencies (torch, ...) through a path entry, but not the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    top_level = {".git", ".venv", "tests", "benchmarks", "docs", "build", "dist", ".pytest_cache", ".hypothesis",
                 "test-artifacts", ".gradio"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skip | (top_level & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, cwd=work)
    [wheel] = (work / "dist").glob("captioner-*.whl")
    target = work / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, cwd=work) if _pip_has_python_option() else \
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                        "--target", site, str(wheel)], check=True, cwd=work)
    return target


def _pip_has_python_option() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--help"], capture_output=True, text=True).stdout
    return "--python" in out


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_captions_offline_with_the_bundled_model(installed_wheel, tmp_path):
    from captioner.core.inference import load_captioner

    want = load_captioner(None, "cpu")(COFFEE).caption
    photo = shutil.copy(COFFEE, tmp_path / "photo.jpg")
    python = str(installed_wheel / "bin" / "python")
    env = _clean_env()
    where = subprocess.run([python, "-c", "import captioner; print(captioner.__file__)"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(installed_wheel), where  # not the checkout
    cli = subprocess.run([python, "-m", "captioner", "caption", "--json", str(photo)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert result["caption"] == want and result["image"] == str(photo)
    assert result["calibrated"] is True and 0 <= result["confidence"] <= 1  # the model's phrase file is in the wheel
    script = ("from captioner import load_captioner\n"
              "c = load_captioner()\n"
              "print(c.loaded.path)\n"
              f"print(c({str(photo)!r}).caption)\n")
    api = subprocess.run([python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert api.returncode == 0, api.stderr
    model_path, caption = api.stdout.strip().splitlines()[-2:]
    assert Path(model_path).is_relative_to(installed_wheel) and caption == want
    entry = subprocess.run([str(installed_wheel / "bin" / "captioner"), "caption", str(photo)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert entry.returncode == 0 and entry.stdout.strip() == want


def test_the_code_runs_on_python_3_10():
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin, "vermin is in requirements-dev.txt"
    files = [str(PACKAGE), str(ROOT / "app.py")]
    out = subprocess.run([vermin, "--target=3.10-", "--violations", "--no-tips", *files], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pyproject_names_the_python_range_and_the_extras():
    from setuptools.config.pyprojecttoml import read_configuration

    project = read_configuration(ROOT / "pyproject.toml")["project"]
    assert project["requires-python"] == ">=3.10"
    assert {"train", "build"} <= set(project["optional-dependencies"])


@pytest.mark.parametrize(("command", "extra"), [
    (["train", "--format", "coco", "--annotations", "missing.json", "--images", ".", "--out", "OUT"], "train"),
    (["evaluate", "--format", "coco", "--annotations", "missing.json", "--images", "."], "train"),
])
def test_a_missing_extra_is_named_in_one_line_before_any_work(tmp_path, command, extra):
    """pycocoevalcap made unimportable; the command stops before it reads data or writes OUT."""
    script = ("import sys\nsys.modules['pycocoevalcap'] = None\n"
              "from captioner.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", script, *command], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{extra}' extra" in lines[0] and f"captioner[{extra}]" in lines[0], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "OUT").exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs Ray: pip install "captioner[ray]"')
def test_an_installed_wheel_serves_the_page_and_the_rest_api(installed_wheel, tmp_path):
    """``python -m captioner serve`` from the wheel, outside the checkout: the mounted page is the
    package's own web app (no app.py beside it) and the REST API answers."""
    import httpx

    from tests.helpers.app import free_port
    from tests.helpers.ray_cluster import RAY_ENV

    port = free_port()
    env = {key: value for key, value in _clean_env(**RAY_ENV, OMP_NUM_THREADS="1").items()
           if not key.startswith("MALLOC_")}
    server = subprocess.Popen([str(installed_wheel / "bin" / "python"), "-m", "captioner", "serve", "--port",
                               str(port), "--backend", "torch"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    try:
        for line in server.stdout:
            output.append(line)
            if line.startswith("serving on"):
                break
        assert server.poll() is None, "".join(output[-30:])
        page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=120)
        assert page.status_code == 200 and "caption_photo" in page.text  # the app's own events
        assert "Show and Tell" in httpx.get(f"http://127.0.0.1:{port}/", timeout=120).text
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/caption", content=COFFEE.read_bytes(), timeout=300)
        assert answer.status_code == 200 and answer.json()["caption"] and answer.json()["calibrated"] is True
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
