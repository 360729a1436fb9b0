"""Model repositories: find one (local directory, Hugging Face Hub, bundled), load, save.

A model repository holds ``config.json``, ``model.safetensors``, ``vocab.json`` and a
``README.md`` model card, the same layout on disk and on the Hub. Weights are read only
from safetensors, checked against the architecture the config describes before use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from captioner.core.errors import ModelFormatError, ModelSourceError
from captioner.core.files import file_sha256
from captioner.core.model.config import ModelConfig
from captioner.core.model.encoders import build_backbone
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import Vocabulary
from captioner.core.repository.hub import download_snapshot, parse_hub_id
from captioner.core.repository.modelcard import build_card


def _bundled_model_dir() -> Path:
    """The bundled model: inside the installed package (a wheel ships it as ``captioner/bundled_model``),
    else ``models/default`` of the checkout this package runs from."""
    package = Path(__file__).resolve().parents[2]
    installed = package / "bundled_model"
    return installed if (installed / "config.json").is_file() else package.parent / "models" / "default"


BUNDLED_MODEL_DIR = _bundled_model_dir()
MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "README.md")
CARD_FILES = ("training.png",)  # pictures a model card may show, published with the model when present


@dataclass
class LoadedModel:
    model: ShowAndTell
    vocab: Vocabulary
    config: ModelConfig
    card: str  # the model card's text ("" when the repository has none)
    source: str  # what the user asked for, for display
    path: Path  # the local directory the files were read from


@dataclass(frozen=True)
class Source:
    """Where a model source is: a local ``directory``, or a Hub ``repo`` at a ``revision`` (None: main)."""

    asked: str  # what the user asked for, for display
    directory: Path | None = None
    repo: str | None = None
    revision: str | None = None

    @property
    def key(self) -> str:
        """The same for every spelling of one source: a directory's resolved path, a Hub id with its revision."""
        if self.repo is not None:
            return f"hub:{self.repo}@{self.revision or 'main'}"
        return f"dir:{self.directory.resolve()}"


def locate(source: str | os.PathLike | None = None) -> Source:
    """Where ``source`` is, without downloading: ``source``, else ``$CAPTIONER_MODEL`` (read now), else
    the bundled model. ``ModelSourceError`` for a source that is neither a directory nor a Hub id."""
    if source is None or str(source) == "":
        source = os.environ.get("CAPTIONER_MODEL") or None
    if source is None:
        if not (BUNDLED_MODEL_DIR / "config.json").is_file():
            raise ModelSourceError(
                f"no model given and the bundled model is missing ({BUNDLED_MODEL_DIR / 'config.json'} "
                "not found); pass --model DIR or owner/name, or set CAPTIONER_MODEL")
        return Source("bundled model (models/default)", BUNDLED_MODEL_DIR)
    local = Path(source).expanduser()
    if local.is_dir():
        return Source(str(source), local)
    hub_id = parse_hub_id(str(source))
    if hub_id is None or local.exists():
        raise ModelSourceError(f"model source {str(source)!r} is not a directory and not a Hub id "
                               "(owner/name or owner/name@revision)")
    return Source(str(source), repo=hub_id[0], revision=hub_id[1])


def resolve_source(source: str | os.PathLike | None = None) -> Path:
    """The local directory holding the model: ``source``, else ``$CAPTIONER_MODEL``, else the bundled model.

    ``owner/name`` or ``owner/name@revision`` that is not an existing directory is fetched
    from the Hugging Face Hub (or found in its cache, e.g. with ``HF_HUB_OFFLINE=1``).
    """
    return _resolve(locate(source))


def _resolve(where: Source, force_download: bool = False, optional_files: Sequence[str] = ()) -> Path:
    """The local directory of a located source, downloaded from the Hub when it is a Hub repository."""
    if where.repo is None:
        return where.directory
    return download_snapshot(where.repo, where.revision, where.asked, MODEL_FILES, force_download=force_download,
                             optional_files=optional_files)


def load_model(source: str | os.PathLike | Source | None = None, device: str | torch.device = "cpu", *,
               defer_backbone: bool = False, optional_files: Sequence[str] = ()) -> LoadedModel:
    """Resolve ``source`` (or take a located ``Source``) and load the model, in eval mode, on ``device``.

    ``defer_backbone``: the encoder's backbone is built and its weights read (and checked) only when
    it is first used (``Encoder.require_backbone``), for a backend that runs it from an exported graph.
    A Hub model whose cached files fail the checks (a download damaged in transit) is
    downloaded again once, so a bad cache entry does not stick. ``optional_files`` (paths inside
    the repository, e.g. ``onnx_export.SHIPPED_FILES``) are fetched too when a Hub repository
    has them; the model files alone are fetched otherwise.
    """
    where = source if isinstance(source, Source) else locate(source)
    try:
        return _load_dir(_resolve(where, optional_files=optional_files), where.asked, device, defer_backbone)
    except ModelFormatError:
        if where.repo is None:
            raise
    return _load_dir(_resolve(where, force_download=True, optional_files=optional_files), where.asked, device,
                     defer_backbone)


BACKBONE_PREFIX = "encoder.backbone."


def _load_dir(path: Path, asked: str, device: str | torch.device,
              defer_backbone: bool = False) -> LoadedModel:
    config = ModelConfig.load(path / "config.json")
    vocab = Vocabulary.load(path / "vocab.json", expected_size=config.vocab_size)
    weights = path / "model.safetensors"

    def load_backbone() -> torch.nn.Module:  # with defer_backbone: when the encoder first needs it
        backbone = build_backbone(config.backbone, config.encoder_output)
        backbone.load_state_dict(read_weights(weights, backbone, config, prefix=BACKBONE_PREFIX), strict=True,
                                 assign=True)
        return backbone.to(device).eval()

    # Built as usual, then its weights replaced. The meta device would skip the random initialisation,
    # but its first use per process costs more than that for the bundled model (benchmarks/model_init.py).
    model = ShowAndTell(config, load_backbone=load_backbone if defer_backbone else None)
    model.load_state_dict(read_weights(weights, model, config, exclude=BACKBONE_PREFIX if defer_backbone else None),
                          strict=True, assign=True)
    model.to(device).eval()
    card_path = path / "README.md"
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else ""
    return LoadedModel(model, vocab, config, card, asked, path)


def read_weights(path: Path, model: torch.nn.Module, config: ModelConfig, *, prefix: str = "",
                 exclude: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from ``path`` after checking names, shapes and (when recorded) the file's SHA-256.

    ``prefix``: only the file's tensors under it (``model`` is that part, e.g. the backbone);
    ``exclude``: the file's tensors under this prefix are left out (``model`` lacks that part)."""
    expected = model.state_dict()
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing")
    digest = config.extra.get("weights_sha256")
    if digest is not None and file_sha256(path) != digest:
        raise ModelFormatError(f"{path} does not match the SHA-256 recorded in config.json (altered or truncated)")
    try:
        with safe_open(path, framework="pt", device="cpu") as weights:
            in_file = {name[len(prefix):]: name for name in weights.keys()
                       if name.startswith(prefix) and not (exclude and name.startswith(exclude))}
            names = set(in_file)
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise ModelFormatError(f"{path} does not fit config.json: missing {missing[:5]}, "
                                       f"unexpected {unexpected[:5]}")
            for name in expected:
                shape = tuple(weights.get_slice(in_file[name]).get_shape())
                if shape != tuple(expected[name].shape):
                    raise ModelFormatError(f"{path}: {name} has shape {shape}, config.json implies "
                                           f"{tuple(expected[name].shape)}")
            return {name: _cast(weights.get_tensor(in_file[name]), expected[name].dtype) for name in expected}
    except SafetensorError as error:
        raise ModelFormatError(f"{path} is not a valid safetensors file (truncated or corrupt?): {error}") from None


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.dtype != dtype else tensor


def save_model(model: ShowAndTell, vocab: Vocabulary, out_dir: str | os.PathLike, card: str | None = None,
               half_precision: bool = False) -> Path:
    """Write a model repository. Files go to a temporary folder that replaces ``out_dir`` at the end,
    so an interrupted save never leaves a half-written model."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        dtype = torch.float16 if half_precision else None
        tensors = {name: (t.to(dtype) if dtype and t.is_floating_point() else t).detach().cpu().contiguous()
                   for name, t in model.state_dict().items()}
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        extra = {**model.config.extra, "weights_sha256": file_sha256(staging / "model.safetensors")}
        config = ModelConfig(**{**model.config.__dict__, "vocab_size": len(vocab), "extra": extra})
        config.save(staging / "config.json")
        vocab.save(staging / "vocab.json")
        (staging / "README.md").write_text(card if card is not None else default_card(config), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary folder
        for file in staging.iterdir():
            file.chmod(0o644)
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` in for ``target``, keeping any files of the target that are not model files."""
    if target.exists():
        for other in target.iterdir():
            if other.name not in MODEL_FILES and not (new / other.name).exists():
                os.replace(other, new / other.name)
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def default_card(config: ModelConfig) -> str:
    return build_card(f"# Show-and-Tell captioner ({config.backbone})\n\n"
                      f"An image captioning model in the captioner format: {config.backbone} encoder "
                      f"({config.encoder_output.replace('_', ' ')}), LSTM decoder ({config.hidden_size} units, "
                      f"{config.num_layers} layer(s)), vocabulary of {config.vocab_size} tokens.", license="mit")


