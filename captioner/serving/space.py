"""Deploy the demo as a Hugging Face Space (``python -m captioner deploy-space OWNER/NAME``).

``stage_space`` writes exactly what a Space needs into a folder: ``app.py``, the ``captioner``
package, ``requirements.txt`` (with a ZeroGPU-supported torch on ZeroGPU hardware), the example
photos with their ``ATTRIBUTION.md``, ``LICENSE``, a ``.gitattributes`` that stores binaries with
LFS, and a ``README.md`` whose front matter (built with huggingface_hub's ``SpaceCard``) names the
Gradio version, the Python version, the Hub model and what to preload at build time. Weights travel
with the Space only when asked: the bundled model (``bundle_model``) or a local model folder.
``space_deploy`` checks the model on the Hub and creates or updates the Space.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from captioner.core.backends.onnx_export import SHIPPED_FILES
from captioner.core.errors import CaptionerError
from captioner.core.files import IMAGE_SUFFIXES
from captioner.core.repository.hub import REPO_ID, parse_hub_id
from captioner.core.repository.storage import BUNDLED_MODEL_DIR, MODEL_FILES, OPTIONAL_MODEL_FILES

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: app.py, examples/, requirements.txt
PYTHON_VERSION = "3.10"  # the Hub's default, stated explicitly; the code runs on 3.10+
CPU_HARDWARE = "cpu-basic"
# The Hub's ZeroGPU documentation lists torch 2.8.0, 2.9.1, 2.10.0 and 2.11.0; torchvision to match.
ZEROGPU_PINS = {"torch": "torch==2.11.0", "torchvision": "torchvision==0.26.0", "spaces": "spaces>=0.51"}
HARDWARE_ALIASES = {"cpu": "cpu-basic", "zerogpu": "zero-a10g", "zero-gpu": "zero-a10g", "zero": "zero-a10g"}
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", "vocab.json")
MAX_PLAIN_FILE = 10 * 1024 * 1024  # the Hub refuses larger files unless stored with LFS/Xet
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class SpaceError(CaptionerError):
    """A Space could not be staged or deployed; the message says why in one line."""


@dataclass
class HubModel:
    """A model on the Hub that the Space downloads: repo, the revision asked for, and (once checked
    on the Hub) the commit it resolves to and the model files it has."""

    repo: str
    revision: str | None = None
    commit: str | None = None
    # all four: the app's snapshot_download asks for the card too, and offline it needs every file cached
    files: tuple[str, ...] = MODEL_FILES

    @property
    def source(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo

    @property
    def preload(self) -> str:
        """The ``preload_from_hub`` entry: ``repo file1,file2[ commit]``."""
        commit = self.commit or (self.revision if self.revision and _COMMIT.match(self.revision) else None)
        return " ".join([self.repo, ",".join(self.files), *([commit] if commit else [])])


@dataclass
class StagedSpace:
    """A staged Space folder and the settings ``deploy_space`` applies with it."""

    repo_id: str
    folder: Path
    hardware: str
    variables: dict[str, str] = field(default_factory=dict)  # Space variables (CAPTIONER_MODEL)
    model: str = ""  # in words: where the Space's weights come from
    files: list[str] = field(default_factory=list)  # staged paths, relative, sorted
    notes: list[str] = field(default_factory=list)  # what was not checked or left out, and why


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise SpaceError(f"{repo_id!r} is not a Space id: give OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def normalise_hardware(name: str) -> str:
    """A Space hardware flavour (``cpu-basic``, ``zero-a10g``, ``t4-small``, ...); ``cpu`` and
    ``zerogpu`` are accepted as short names."""
    from huggingface_hub import SpaceHardware

    flavour = HARDWARE_ALIASES.get(name.strip().lower(), name.strip().lower())
    known = [hardware.value for hardware in SpaceHardware]
    if flavour not in known:
        raise SpaceError(f"unknown Space hardware {name!r}: choose one of {', '.join(known)} (or cpu, zerogpu)")
    return flavour


def is_zero_gpu_hardware(hardware: str) -> bool:
    return hardware.startswith("zero-")


def is_cpu_hardware(hardware: str) -> bool:
    return hardware.startswith("cpu-")


def parse_model(model: str | os.PathLike | None) -> HubModel | Path | None:
    """A local model folder (a Path), a Hub model (``owner/name[@revision]``), or None."""
    if model is None or str(model) == "":
        return None
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    hub_id = parse_hub_id(str(model))
    if hub_id is None or local.exists():
        raise SpaceError(f"--model {str(model)!r} is neither a model folder nor a Hub model id "
                         "(owner/name or owner/name@revision)")
    return HubModel(*hub_id)


def gradio_version() -> str:
    """The installed Gradio's version: the Space's ``sdk_version``, so the Space runs what was tested."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise SpaceError("Gradio is not installed, so the Space's sdk_version is unknown: "
                         "pip install -r requirements.txt") from None


def space_requirements(hardware: str, root: Path = PROJECT_ROOT) -> str:
    """The project's requirements.txt; on ZeroGPU with torch/torchvision pinned to a version the
    hardware supports and the ``spaces`` package added."""
    text = (root / "requirements.txt").read_text(encoding="utf-8")
    if not is_zero_gpu_hardware(hardware):
        return text
    lines, seen = [], set()
    for line in text.splitlines():
        name = re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower()
        if name in ZEROGPU_PINS:
            lines.append(ZEROGPU_PINS[name] + "  # a version ZeroGPU supports")
            seen.add(name)
        else:
            lines.append(line)
    lines += [ZEROGPU_PINS[name] for name in ZEROGPU_PINS if name not in seen]
    return "\n".join(lines) + "\n"


def lfs_patterns(gitattributes: Path) -> list[str]:
    """The patterns a ``.gitattributes`` stores with LFS (``filter=lfs``)."""
    if not gitattributes.is_file():
        return []
    patterns = []
    for line in gitattributes.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def stored_with_lfs(path: str, patterns: list[str]) -> bool:
    """Whether git would apply one of ``patterns`` (no slash: any file name; else the whole path)."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in pattern else name, pattern.lstrip("/")) for pattern in patterns)


def stage_space(folder: str | os.PathLike, repo_id: str, *, model: str | os.PathLike | HubModel | None = None,
                bundle_model: bool = False, hardware: str = CPU_HARDWARE,
                root: str | os.PathLike = PROJECT_ROOT) -> StagedSpace:
    """Write the Space for ``repo_id`` into ``folder`` (missing or empty) and return what was staged.

    ``model``: a Hub model the Space downloads at build time (``preload_from_hub``) and start-up
    (the ``CAPTIONER_MODEL`` variable), or a local model folder uploaded with the Space; None: the
    bundled model, uploaded with the Space. ``bundle_model``: upload the bundled model as well.
    A model folder's ONNX export (``onnx/``) is staged only for CPU hardware (where the app runs ONNX
    Runtime) and only when it belongs to the folder's weights; otherwise it is left out and a note
    says why (the app exports the model itself when it needs to).
    """
    repo_id, hardware, root = check_repo_id(repo_id), normalise_hardware(hardware), Path(root)
    source = model if isinstance(model, HubModel) else parse_model(model)
    bundle_model = bundle_model or source is None
    missing = [name for name in ("app.py", "requirements.txt", "captioner", "examples/ATTRIBUTION.md")
               if not (root / name).exists()]
    if missing:
        raise SpaceError(f"{root} is not a captioner checkout (missing {', '.join(missing)}): deploy-space "
                         "stages the app from the project's source folder")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SpaceError(f"{folder} exists and is not an empty folder: give a new or empty one")
    folder.mkdir(parents=True, exist_ok=True)

    shutil.copy2(root / "app.py", folder / "app.py")
    shutil.copytree(root / "captioner", folder / "captioner", ignore=_package_ignore)
    for name in ("LICENSE", ".gitattributes"):
        if (root / name).is_file():
            shutil.copy2(root / name, folder / name)
    (folder / "requirements.txt").write_text(space_requirements(hardware, root), encoding="utf-8")
    _stage_examples(root / "examples", folder / "examples")

    variables: dict[str, str] = {}
    notes: list[str] = []
    with_export = is_cpu_hardware(hardware)
    if bundle_model:
        bundled = root / "models" / "default" if (root / "models" / "default").is_dir() else BUNDLED_MODEL_DIR
        notes += _copy_model(bundled, folder / "models" / "default", with_export)
    if isinstance(source, HubModel):
        variables["CAPTIONER_MODEL"] = source.source
        where = f"the Hub model `{source.source}`, downloaded when the Space is built"
    elif isinstance(source, Path):
        name = re.sub(r"[^\w.-]", "-", source.resolve().name) or "model"
        name = "uploaded" if name == "default" else name
        notes += _copy_model(source, folder / "models" / name, with_export)
        variables["CAPTIONER_MODEL"] = f"models/{name}"
        where = f"the model folder `models/{name}` uploaded with the Space (from `{source}`)"
    else:
        where = "the bundled model `models/default`, uploaded with the Space"
    card = space_card(repo_id, hardware, source if isinstance(source, HubModel) else None, where)
    (folder / "README.md").write_text(card, encoding="utf-8")

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    patterns = lfs_patterns(folder / ".gitattributes")
    too_big = [f for f in files if (folder / f).stat().st_size > MAX_PLAIN_FILE and not stored_with_lfs(f, patterns)]
    if too_big:
        raise SpaceError(f"staged files over 10 MB that .gitattributes does not store with LFS: {', '.join(too_big)}")
    return StagedSpace(repo_id, folder, hardware, variables, where, files, notes)


def _package_ignore(directory: str, names: list[str]) -> set[str]:
    """What the app does not need from the package: caches, and the training and build parts
    (the app imports only core and serving; the command line imports those parts lazily)."""
    top = Path(directory).name == "captioner"
    return {name for name in names if name == "__pycache__" or name.endswith(".pyc")
            or (top and name in ("training", "build", "bundled_model"))}


def _stage_examples(source: Path, target: Path) -> None:
    """The example photos and ATTRIBUTION.md; a photo that ATTRIBUTION.md does not name is refused."""
    target.mkdir()
    attribution = (source / "ATTRIBUTION.md").read_text(encoding="utf-8")
    shutil.copy2(source / "ATTRIBUTION.md", target / "ATTRIBUTION.md")
    for photo in sorted(source.iterdir()):
        if photo.is_file() and photo.suffix.lower() in IMAGE_SUFFIXES and not photo.name.startswith("."):
            if f"`{photo.name}`" not in attribution:
                raise SpaceError(f"examples/{photo.name} is not in examples/ATTRIBUTION.md: add its source, "
                                 "author and licence there (or remove it) before publishing it")
            shutil.copy2(photo, target / photo.name)


def _copy_model(source: Path, target: Path, with_export: bool) -> list[str]:
    """Copy a model folder's files after checking that it loads (nothing broken is published), and
    with ``with_export`` its ONNX export when that belongs to these weights. Returns notes on an
    export left out."""
    from captioner.core.backends.onnx_export import (
        SHIPPED_EXPORT,
        SHIPPED_STEP,
        BackendUnavailable,
        ShippedExportError,
        verify_shipped,
    )
    from captioner.core.repository.storage import load_model

    missing = [name for name in REQUIRED_MODEL_FILES if not (source / name).is_file()]
    if missing:
        raise SpaceError(f"{source} is not a model folder (missing {', '.join(missing)})")
    loaded = load_model(source)
    target.mkdir(parents=True)
    for name in MODEL_FILES + OPTIONAL_MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    if not any((source / name).is_file() for name in SHIPPED_FILES):
        return []
    if not with_export:
        return [f"{source}/onnx left out: this hardware runs the model with torch"]
    try:
        graphs = verify_shipped(loaded)
    except (ShippedExportError, BackendUnavailable) as error:
        return [f"{source}/onnx left out: {error}"]
    if not {SHIPPED_EXPORT, SHIPPED_STEP} <= set(graphs):  # the int8 encoder is optional
        return [f"{source}/onnx left out: it holds only {', '.join(g.as_posix() for g in graphs)}"]
    for graph in graphs:
        (target / graph).parent.mkdir(exist_ok=True)
        shutil.copy2(source / graph, target / graph)
    return []


def space_card(repo_id: str, hardware: str, hub_model: HubModel | None, where: str) -> str:
    """The Space's README.md: front matter from ``SpaceCardData`` and a short description."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(
        title=repo_id.split("/", 1)[1], sdk="gradio", sdk_version=gradio_version(), python_version=PYTHON_VERSION,
        app_file="app.py", license="mit", models=[hub_model.repo] if hub_model else None,
        emoji="🖼️", colorFrom="indigo", colorTo="blue", pinned=False,
        short_description="Show-and-Tell image captioning (CNN encoder + LSTM decoder)",
        preload_from_hub=[hub_model.preload] if hub_model else None,
        tags=["image-to-text", "image-captioning", "show-and-tell"])
    gpu = ("ZeroGPU: every forward pass runs inside `@spaces.GPU`, and `requirements.txt` pins a torch "
           "version ZeroGPU supports" if is_zero_gpu_hardware(hardware) else f"`{hardware}`")
    body = (f"# {data.title}\n\n"
            "A \"Show and Tell\" image captioner: a pretrained CNN encodes the photo and an LSTM decoder "
            "writes a sentence about it, word by word. Drop a photo, or click an example.\n\n"
            f"- **Weights:** {where}.\n"
            f"- **Hardware:** {gpu}.\n"
            "- **API:** `gradio_client.Client(SPACE).predict(handle_file(IMAGE), 3, 3, 20, api_name=\"/caption\")`.\n\n"
            "The example photos and their licences are listed in `examples/ATTRIBUTION.md`. "
            "This Space was staged by `python -m captioner deploy-space`; the app's Model tab says "
            "which model and hardware it runs on.\n")
    card = SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)


def print_staged(staged: StagedSpace, file=sys.stdout) -> None:
    """What was staged, for the command line."""
    total = sum((staged.folder / f).stat().st_size for f in staged.files)
    print(f"staged {len(staged.files)} files ({total / 1e6:.1f} MB) for the Space {staged.repo_id} in "
          f"{staged.folder}", file=file)
    print(f"weights: {staged.model}", file=file)
    print(f"hardware: {staged.hardware}", file=file)
    for key, value in staged.variables.items():
        print(f"variable: {key}={value}", file=file)
    for note in staged.notes:
        print(f"note: {note}", file=file)
