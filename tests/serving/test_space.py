"""deploy-space: the staged Space folder, its app started as a Space starts it, deployment to a local
Hub-compatible server, and the ZeroGPU hook around every forward pass."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from huggingface_hub import SpaceCard, snapshot_download

from tests.helpers.app import free_port
from tests.helpers.paths import ROOT
from captioner.core.backends.onnx_export import SHIPPED_FILES, export_to_repo
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, MODEL_FILES, OPTIONAL_MODEL_FILES
from tests.helpers.hub import hub  # noqa: F401  (fixture)
from tests.helpers.hub_server import HubServer, free_port_url

EXAMPLES = ROOT / "examples"
PHOTOS = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
TEN_MB = 10 * 1024 * 1024
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio 6.31, with pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def deploy_space(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m captioner deploy-space ARGS`` from the checkout, offline unless ``env`` says otherwise."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "captioner", "deploy-space", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def staged_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def lfs_filter(folder: Path, path: str) -> str:
    """What git itself says the ``filter`` attribute of ``path`` is, per the folder's .gitattributes."""
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    out = subprocess.run(["git", "-C", str(folder), "check-attr", "filter", "--", path], check=True,
                         capture_output=True, text=True).stdout
    return out.rsplit(":", 1)[1].strip()


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- staging (--dry-run) -----------------------------------------------------------------------------

@pytest.mark.slow
def test_dry_run_stages_a_space_that_pulls_its_weights_from_the_hub(tmp_path):
    out = tmp_path / "space"
    result = deploy_space("me/captioner-demo", "--model", "someone/captioner@v2", "--dry-run", str(out))
    assert result.returncode == 0, result.stderr
    assert "CAPTIONER_MODEL=someone/captioner@v2" in result.stdout and "nothing was uploaded" in result.stdout

    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio"
    assert card.data.sdk_version == metadata.version("gradio")
    assert card.data.python_version == "3.10"  # a string: YAML's 3.10 would be the number 3.1
    assert card.data.app_file == "app.py"
    assert card.data.models == ["someone/captioner"]
    # a branch or tag cannot be pinned there (the Hub takes a commit); the app downloads v2 itself
    assert card.data.to_dict()["preload_from_hub"] == [f"someone/captioner {','.join(MODEL_FILES)}"]
    assert "someone/captioner@v2" in card.text

    files = staged_files(out)
    assert files["app.py"] == (ROOT / "app.py").read_bytes()
    assert files["requirements.txt"] == (ROOT / "requirements.txt").read_bytes()  # CPU: the project's own
    assert files["captioner/web/batcher.py"] == (ROOT / "captioner/web/batcher.py").read_bytes()
    assert "captioner/core/model/imagenet_classes.json" in files and "LICENSE" in files and ".gitattributes" in files
    assert not any(name.startswith(("models/", "captioner/training/", "captioner/build/")) or "__pycache__" in name
                   for name in files)
    assert sorted(n.split("/", 1)[1] for n in files if n.startswith("examples/") and not n.endswith(".md")) == PHOTOS
    attribution = files["examples/ATTRIBUTION.md"].decode()
    assert all(f"`{photo}`" in attribution for photo in PHOTOS)
    assert max(len(data) for data in files.values()) < TEN_MB


@pytest.mark.slow
def test_dry_run_pins_the_commit_to_preload_when_the_revision_is_one(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    result = deploy_space("me/demo", "--model", f"someone/captioner@{commit}", "--dry-run", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    card = SpaceCard.load(tmp_path / "s" / "README.md")
    assert card.data.to_dict()["preload_from_hub"] == [f"someone/captioner {','.join(MODEL_FILES)} {commit}"]


@pytest.mark.slow
def test_zerogpu_requirements_pin_a_torch_the_hardware_supports(tmp_path):
    result = deploy_space("me/demo", "--model", "someone/captioner", "--hardware", "zerogpu",
                          "--dry-run", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert "hardware: zero-a10g" in result.stdout
    lines = [line.split("#")[0].strip() for line in (tmp_path / "s/requirements.txt").read_text().splitlines()]
    torch_pin = next(line for line in lines if line.startswith("torch=="))
    major, minor = map(int, torch_pin.removeprefix("torch==").split(".")[:2])
    assert (2, 8) <= (major, minor) <= (2, 11)  # the versions the Hub's ZeroGPU documentation lists
    vision = next(line for line in lines if line.startswith("torchvision=="))
    assert int(vision.removeprefix("torchvision==").split(".")[1]) == minor + 15  # torchvision 0.(n+15) <-> torch 2.n
    assert any(line.startswith("spaces") for line in lines)
    project = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
               if not line.startswith(("torch>", "torchvision>"))]
    assert set(project) <= set(lines)
    assert "ZeroGPU" in (tmp_path / "s/README.md").read_text()


@pytest.mark.parametrize("args, words", [
    (["--model", "not a model"], ["neither a model folder nor a Hub model id"]),
    (["--model", "someone/m", "--hardware", "h100-imaginary"], ["unknown Space hardware", "zero-a10g"]),
])
@pytest.mark.slow
def test_bad_requests_get_one_line_errors(tmp_path, args, words):
    line = one_line_error(deploy_space("me/demo", *args, "--dry-run", str(tmp_path / "s")))
    assert all(word in line for word in words), line
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


@pytest.mark.slow
def test_without_a_model_the_bundled_model_is_staged(tmp_path):
    result = deploy_space("me/demo", "--dry-run", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert "weights: the bundled model `models/default`" in result.stdout
    staged = tmp_path / "s" / "models" / "default"
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in BUNDLED_MODEL_DIR.iterdir()
                                                              if p.name in MODEL_FILES + OPTIONAL_MODEL_FILES)
    assert (staged / "model.safetensors").read_bytes() == (BUNDLED_MODEL_DIR / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_dry_run_checks_the_hub_model_when_the_hub_can_be_reached(model_on_hub, tmp_path):
    env = model_on_hub.environ(tmp_path / "cache")
    line = one_line_error(deploy_space("me/demo", "--model", "someone/nothing", "--dry-run", str(tmp_path / "a"),
                                       env=env))
    assert "someone/nothing" in line and "no such repository" in line
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    checked = deploy_space("me/demo", "--model", "someone/captioner", "--dry-run", str(tmp_path / "b"), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "not checked" not in checked.stdout
    commit = model_on_hub.repos["someone/captioner"].refs["main"]
    card = SpaceCard.load(tmp_path / "b" / "README.md")
    assert card.data.to_dict()["preload_from_hub"] == [f"someone/captioner {','.join(MODEL_FILES)} {commit}"]
    assert model_on_hub.spaces == {}  # a dry run uploads nothing
    offline = deploy_space("me/demo", "--model", "someone/nothing", "--dry-run", str(tmp_path / "c"))
    assert offline.returncode == 0, offline.stderr
    assert "note: the model 'someone/nothing' was not checked: could not check the model" in offline.stdout
    assert "offline" in offline.stdout.lower() or "could not reach the Hub" in offline.stdout


@pytest.mark.slow
def test_a_model_folders_onnx_export_is_staged_only_when_it_matches_on_cpu(tmp_path, tiny_model_copy, app_model):
    pytest.importorskip("onnx")
    export_to_repo(tiny_model_copy)
    cpu = deploy_space("me/demo", "--model", str(tiny_model_copy), "--dry-run", str(tmp_path / "cpu"))
    assert cpu.returncode == 0, cpu.stderr
    staged = tmp_path / "cpu" / "models" / "model"
    shipped = [name for name in SHIPPED_FILES if (tiny_model_copy / name).is_file()]
    assert len(shipped) >= 2  # the encoder and the decoder step (an int8 encoder is optional)
    assert all((staged / name).read_bytes() == (tiny_model_copy / name).read_bytes() for name in shipped)
    assert "note:" not in cpu.stdout
    gpu = deploy_space("me/demo", "--model", str(tiny_model_copy), "--hardware", "zerogpu",
                       "--dry-run", str(tmp_path / "gpu"))
    assert gpu.returncode == 0, gpu.stderr
    assert not (tmp_path / "gpu" / "models" / "model" / "onnx").exists()
    assert "onnx left out: this hardware runs the model with torch" in gpu.stdout
    stale = tmp_path / "stale"
    shutil.copytree(app_model, stale)
    shutil.copytree(tiny_model_copy / "onnx", stale / "onnx")  # another model's export
    result = deploy_space("me/demo", "--model", str(stale), "--dry-run", str(tmp_path / "stale-space"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "stale-space" / "models" / "stale" / "onnx").exists()
    assert "onnx left out:" in result.stdout and "does not belong to this model" in result.stdout


@pytest.mark.slow
def test_refuses_to_stage_into_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_line_error(deploy_space("me/demo", "--model", "someone/m", "--dry-run", str(tmp_path)))
    assert "not an empty folder" in line and (tmp_path / "notes.txt").read_text() == "mine"


@contextlib.contextmanager
def running_space(folder: Path, tmp_path: Path, **env_vars: str) -> Iterator[str]:
    """Start a staged Space the way the Hub does, ``python app.py`` in its folder, with no network
    (``HF_HUB_OFFLINE=1``) and the default Hugging Face cache under ``tmp_path/hf-home``; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAPTIONER_", "PYTHONPATH"))}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "GRADIO_SERVER_NAME": "127.0.0.1",
            "CAPTIONER_CACHE": str(tmp_path / "captioner-cache"),
            "GRADIO_SERVER_PORT": str(port), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_vars}
    which = subprocess.run([sys.executable, "-c", "import captioner; print(captioner.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(which) == folder / "captioner" / "__init__.py"  # the staged package, not the checkout's
    log = tmp_path / "space.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_staged_space_with_the_bundled_model_starts_and_answers_caption(tmp_path):
    out = tmp_path / "space"
    result = deploy_space("me/demo", "--bundle-model", "--dry-run", str(out))
    assert result.returncode == 0, result.stderr
    weights = out / "models/default/model.safetensors"
    assert weights.read_bytes() == (BUNDLED_MODEL_DIR / "model.safetensors").read_bytes()
    big = [name for name, data in staged_files(out).items() if len(data) > TEN_MB]
    assert big == ["models/default/model.safetensors"]  # staged on purpose ...
    assert lfs_filter(out, "models/default/model.safetensors") == "lfs"  # ... and stored with LFS, says git
    assert lfs_filter(out, "examples/coffee.jpg") == "lfs"
    assert lfs_filter(out, "app.py") == "unspecified"
    card = SpaceCard.load(out / "README.md")
    assert card.data.models is None and "preload_from_hub" not in card.data.to_dict()
    shutil.rmtree(out / ".git")

    with running_space(out, tmp_path) as url:
        answer = Client(url, verbose=False).predict(handle_file(EXAMPLES / "coffee.jpg"), 3, 3, 20,
                                                    api_name="/caption")
    assert answer["caption"] and answer["candidates"]
    assert Path(answer["model"]) == out / "models" / "default"  # the staged copy of the bundled model
    assert answer["top_classes"][0]["label"] in ("espresso", "cup", "coffee mug")


@pytest.mark.slow
def test_staged_space_loads_the_hub_model_its_card_preloads(tmp_path, tiny_model_dir):
    out = tmp_path / "space"
    result = deploy_space("me/demo", "--model", "someone/captioner", "--dry-run", str(out))
    assert result.returncode == 0, result.stderr
    # What the Hub does at build time: download the preload_from_hub entry into the default cache.
    repo, files = SpaceCard.load(out / "README.md").data.to_dict()["preload_from_hub"][0].split(" ")[:2]
    with HubServer() as server:
        server.add_repo("someone/captioner", {name: (tiny_model_dir / name).read_bytes() for name in MODEL_FILES})
        snapshot_download(repo, allow_patterns=files.split(","), cache_dir=tmp_path / "hf-home" / "hub",
                          endpoint=server.endpoint, token=False)
    with running_space(out, tmp_path, CAPTIONER_MODEL="someone/captioner") as url:  # the Space variable
        answer = Client(url, verbose=False).predict(handle_file(EXAMPLES / "coffee.jpg"), 2, 2, 8,
                                                    api_name="/caption")
    assert answer["model"] == "someone/captioner" and answer["candidates"]


@pytest.mark.slow
def test_a_cpu_space_preloads_the_onnx_export_its_model_ships(tmp_path, tiny_model_copy):
    """A CPU Space runs ONNX Runtime, so the model's shipped export is preloaded with its weights and
    the app uses it without exporting; a GPU Space runs torch and leaves it out."""
    export_to_repo(tiny_model_copy)
    with HubServer() as hub:
        hub.add_repo("someone/captioner", tiny_model_copy)
        env = hub.environ(tmp_path / "cache")
        shipped = tuple(name for name in SHIPPED_FILES if (tiny_model_copy / name).is_file())  # no int8 encoder here
        for hardware, preloaded in (("zerogpu", MODEL_FILES), ("cpu", MODEL_FILES + shipped)):
            result = deploy_space("me/demo", "--model", "someone/captioner", "--hardware", hardware, env=env)
            assert result.returncode == 0, result.stderr
            card = SpaceCard(hub.space("me/demo").commits[hub.space("me/demo").refs["main"]]["README.md"].decode())
            repo, files = card.data.to_dict()["preload_from_hub"][0].split(" ")[:2]
            assert files.split(",") == list(preloaded)
        out = tmp_path / "space"
        stage = deploy_space("me/demo", "--model", "someone/captioner", "--dry-run", str(out), env=env)
        assert stage.returncode == 0, stage.stderr
        snapshot_download(repo, allow_patterns=files.split(","), cache_dir=tmp_path / "hf-home" / "hub",
                          endpoint=hub.endpoint, token=False)  # what the Hub does at build time
    with running_space(out, tmp_path, CAPTIONER_MODEL="someone/captioner") as url:
        answer = Client(url, verbose=False).predict(handle_file(EXAMPLES / "coffee.jpg"), 2, 2, 8,
                                                    api_name="/caption")
    assert answer["model"] == "someone/captioner" and answer["candidates"]
    assert not list((tmp_path / "captioner-cache").rglob("*.onnx"))  # the shipped export ran: nothing exported


# -- deploying to a Hub-compatible server -------------------------------------------------------------

@pytest.fixture
def model_on_hub(tiny_model_dir):
    with HubServer() as server:
        server.add_repo("someone/captioner", {name: (tiny_model_dir / name).read_bytes() for name in MODEL_FILES})
        yield server


@pytest.mark.slow
def test_deploy_creates_the_space_and_a_second_run_updates_it(model_on_hub, tiny_model_dir, tmp_path):
    hub = model_on_hub
    env = hub.environ(tmp_path / "cache")
    first = deploy_space("me/demo", "--model", str(tiny_model_dir), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == f"{hub.endpoint}/spaces/me/demo"
    space = hub.space("me/demo")
    assert space.sdk == "gradio" and not space.private and space.hardware == "cpu-basic"
    files = space.commits[space.refs["main"]]
    assert files["app.py"] == (ROOT / "app.py").read_bytes()
    assert files["captioner/serving/space.py"] == (ROOT / "captioner/serving/space.py").read_bytes()
    assert {f"examples/{photo}" for photo in PHOTOS} | {"examples/ATTRIBUTION.md", "README.md"} <= set(files)
    assert files["models/tiny/model.safetensors"] == (tiny_model_dir / "model.safetensors").read_bytes()
    assert space.variables["CAPTIONER_MODEL"]["value"] == "models/tiny"
    commits = len(space.commits)

    second = deploy_space("me/demo", "--model", "someone/captioner", "--hardware", "zerogpu", env=env)
    assert second.returncode == 0, second.stderr
    assert len(hub.spaces) == 1 and len(space.commits) == commits + 1
    files = space.commits[space.refs["main"]]
    assert not any(name.startswith("models/") for name in files)  # the uploaded model went with the old commit
    assert "torch==2.11.0" in files["requirements.txt"].decode()
    card = SpaceCard(files["README.md"].decode())
    assert card.data.models == ["someone/captioner"]
    commit = hub.repos["someone/captioner"].refs["main"]
    assert card.data.to_dict()["preload_from_hub"] == [
        f"someone/captioner {','.join(MODEL_FILES)} {commit}"]  # checked on the Hub: files and commit pinned
    assert space.variables["CAPTIONER_MODEL"]["value"] == "someone/captioner"
    assert space.hardware == "zero-a10g"
    assert all("test" == r.headers.get("authorization", "").removeprefix("Bearer ")
               for r in hub.requests if r.path.startswith("/api/spaces") or r.path == "/api/repos/create")


@pytest.mark.slow
def test_deploy_refuses_a_hub_model_that_is_missing(model_on_hub, tmp_path):
    line = one_line_error(deploy_space("me/demo", "--model", "someone/nothing", env=model_on_hub.environ(tmp_path)))
    assert "someone/nothing" in line and "no such repository" in line
    assert model_on_hub.spaces == {}


@pytest.mark.slow
def test_bad_token_gives_a_one_line_error(tiny_model_dir, tmp_path):
    with HubServer(tokens={"good-token"}) as hub:
        line = one_line_error(deploy_space("me/demo", "--model", str(tiny_model_dir),
                                           env=hub.environ(tmp_path, HF_TOKEN="bad-token")))
        assert "refused the token" in line and "hf auth login" in line
        assert hub.spaces == {}


@pytest.mark.slow
def test_missing_token_gives_a_one_line_error(tmp_path):
    with HubServer() as hub:
        env = hub.environ(tmp_path / "cache", HF_HOME=str(tmp_path / "home"))
        del env["HF_TOKEN"]
        line = one_line_error(deploy_space("me/demo", "--model", "someone/captioner", env=env))
        assert "no Hugging Face token" in line and hub.requests == []


@pytest.mark.slow
def test_unreachable_hub_gives_a_one_line_error(tiny_model_dir, tmp_path):
    endpoint = free_port_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_ENDPOINT": endpoint, "HF_TOKEN": "test", "HF_HUB_CACHE": str(tmp_path)}
    line = one_line_error(deploy_space("me/demo", "--model", str(tiny_model_dir), env=env))
    assert "could not reach the Hub" in line and endpoint in line


def test_the_repository_readme_front_matter_matches_what_is_staged():
    card = SpaceCard.load(ROOT / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.python_version == "3.10" and card.data.sdk_version == metadata.version("gradio")
