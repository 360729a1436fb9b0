"""The feature cache: encode each image once with a frozen backbone and keep the result on disk.

Training a decoder on a frozen backbone needs the backbone's output for every image, every
epoch; computing it once makes an epoch cost only the decoder. An entry is keyed by the
SHA-256 of the image file's bytes inside a folder named by a ``FeatureSpec``: backbone name,
encoder output, preprocessing (resize, crop, mean, std) and a fingerprint of the backbone's
weights. A renamed file reuses its features; a changed backbone, preprocessing or weights
never does.

The cache is a folder of shards (``<uuid>.safetensors``), each holding a ``features`` matrix
and, in its header, the image keys of its rows: the shard headers are the index. A shard is
written to a temporary file, flushed to disk and renamed into place, so a shard either exists
whole or not at all; an interrupt (Ctrl-C, a kill, a power cut) loses at most the rows not yet
written, and the next run computes only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from captioner.core.files import file_sha256, write_atomic
from captioner.core.images.preprocess import Preprocessor, load_pixels, preprocessor_for
from captioner.core.model.config import ModelConfig
from captioner.core.paths import cache_dir

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".safetensors"
_TEMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    """The feature cache's folder: ``features`` in the captioner's cache (``paths.cache_root``)."""
    return cache_dir("features")


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides what a backbone emits for an image file."""

    backbone: str
    encoder_output: str
    resize: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str  # SHA-256 of the backbone's parameters and buffers

    @classmethod
    def of(cls, config: ModelConfig, backbone: nn.Module) -> FeatureSpec:
        return cls(config.backbone, config.encoder_output, config.resize, config.image_size,
                   tuple(config.mean), tuple(config.std), weights_fingerprint(backbone))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def folder_name(self) -> str:
        return f"{self.backbone}-{self.encoder_output}-{self.image_size}px-{self.digest[:16]}"


def weights_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_key(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes."""
    return file_sha256(path)


class FeatureCache:
    """The shards of one ``FeatureSpec`` under ``root``; see the module docstring."""

    def __init__(self, root: str | os.PathLike, spec: FeatureSpec):
        self.spec = spec
        self.dir = Path(root) / spec.folder_name
        self.dir.mkdir(parents=True, exist_ok=True)
        spec_file = self.dir / "spec.json"
        if not spec_file.exists():
            _atomic_write(spec_file, (json.dumps(asdict(spec), indent=2) + "\n").encode())
        self._remove_stale_temp_files()
        self._index: dict[str, tuple[Path, int]] = {}
        self.dim: int | None = None
        for shard in sorted(self.dir.glob(f"*{SHARD_SUFFIX}")):
            self._read_header(shard)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def shards(self) -> list[Path]:
        return sorted(self.dir.glob(f"*{SHARD_SUFFIX}"))

    def add(self, keys: Sequence[str], features: torch.Tensor) -> Path:
        """Write one shard (atomically) holding ``features[i]`` for ``keys[i]``."""
        if len(keys) != features.shape[0] or features.dim() != 2:
            raise ValueError(f"{len(keys)} keys for a feature matrix of shape {tuple(features.shape)}")
        data = safetensors_bytes({"features": features.detach().to("cpu", torch.float32).contiguous()},
                                 metadata={"keys": json.dumps(list(keys))})
        path = self.dir / f"{uuid.uuid4().hex}{SHARD_SUFFIX}"
        _atomic_write(path, data)
        for row, key in enumerate(keys):
            self._index.setdefault(key, (path, row))
        self.dim = features.shape[1]
        return path

    def load(self, keys: Sequence[str]) -> torch.Tensor:
        """The cached features of ``keys``, one row each, in that order (KeyError when one is missing)."""
        missing = [key for key in keys if key not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} images are not in the feature cache (e.g. {missing[0]})")
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._index[key]
            by_shard.setdefault(shard, []).append((position, row))
        out = torch.empty(len(keys), self.dim or 0)
        for shard, pairs in by_shard.items():
            with safe_open(shard, framework="pt", device="cpu") as file:
                matrix = file.get_tensor("features")
            positions, rows = zip(*pairs)
            out[list(positions)] = matrix[list(rows)]
        return out

    def _read_header(self, shard: Path) -> None:
        try:
            with safe_open(shard, framework="pt", device="cpu") as file:
                keys = json.loads((file.metadata() or {}).get("keys", "null"))
                shape = file.get_slice("features").get_shape()
            if not (isinstance(keys, list) and len(shape) == 2 and shape[0] == len(keys)
                    and (self.dim is None or shape[1] == self.dim)):
                raise ValueError("header does not match the features")
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            # Only a file damaged after it was written can get here; its rows are recomputed.
            logger.warning("feature cache: removing damaged shard %s (%s)", shard, error)
            shard.unlink(missing_ok=True)
            return
        self.dim = shape[1]
        for row, key in enumerate(keys):
            self._index.setdefault(key, (shard, row))

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of processes that died mid-write (a live writer's file is left alone)."""
        for temp in self.dir.glob(f"{_TEMP_PREFIX}*"):
            try:
                pid = int(temp.name[len(_TEMP_PREFIX):].split("-")[0])  # .tmp-PID-...
            except (IndexError, ValueError):
                pid = -1
            if pid <= 0 or not _process_alive(pid):
                temp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes no temp file while opening a cache
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(path, data, prefix=f"{_TEMP_PREFIX}{os.getpid()}-")  # the pid: see _remove_stale_temp_files


@dataclass
class ExtractedFeatures:
    """Features of the usable images among the paths asked for."""

    features: torch.Tensor  # (len(kept), D), float32, on the CPU; row i belongs to paths[kept[i]]
    kept: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was skipped)
    computed: int = 0  # images run through the backbone by this call
    reused: int = 0  # distinct images found in the cache


def extract_features(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    shard_size: int = 1024,
    workers: int | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> ExtractedFeatures:
    """Backbone outputs (``model.encoder.backbone_features``) for ``paths``, from the cache or computed.

    ``model`` is a ``ShowAndTell`` on the device to use; its config gives the preprocessing.
    Images that cannot be read or decoded are skipped and listed in ``failures``. Files with
    the same content are encoded once. ``on_batch(images_encoded_so_far)`` runs after each
    batch. Finished rows are written even when the run is interrupted. ``workers`` threads
    (default: up to 8) hash and decode images while the backbone runs on the previous batch.
    """
    config: ModelConfig = model.config
    backbone = model.encoder.backbone
    spec = FeatureSpec.of(config, backbone)
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(), spec)
    preprocess = preprocessor_for(config)
    device = next(backbone.parameters()).device
    failures: list[tuple[str, str]] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        keys = _hash_files(paths, pool, failures, progress)
        todo: dict[str, str] = {}  # key -> a path with that content, in first-seen order
        for path, key in zip(paths, keys):
            if key is not None and key not in cache and key not in todo:
                todo[key] = str(path)
        reused = len({k for k in keys if k is not None and k in cache})
        bad_keys = _encode_missing(model, cache, todo, preprocess, pool, device, batch_size, shard_size,
                                   failures, progress, on_batch)
    kept = [i for i, key in enumerate(keys) if key is not None and key not in bad_keys]
    features = cache.load([keys[i] for i in kept]) if kept else torch.empty(0, cache.dim or 0)
    reported = {path for path, _ in failures}
    failures += [(str(paths[i]), bad_keys[key]) for i, key in enumerate(keys)
                 if key in bad_keys and str(paths[i]) not in reported]  # copies of a bad file
    return ExtractedFeatures(features, kept, failures, len(todo) - len(bad_keys), reused)


def _hash_files(paths: Sequence[str | os.PathLike], pool: ThreadPoolExecutor,
                failures: list[tuple[str, str]], progress: bool) -> list[str | None]:
    from tqdm import tqdm

    def key_or_error(path) -> str | OSError:
        try:
            return file_key(path)
        except OSError as error:
            return error

    keys: list[str | None] = []
    results = pool.map(key_or_error, paths)
    for path, result in tqdm(zip(paths, results), total=len(paths), desc="hashing images", unit="img",
                             disable=not progress or len(paths) < 1000, file=sys.stderr):
        if isinstance(result, OSError):
            reason = "file not found" if isinstance(result, FileNotFoundError) else \
                f"cannot read: {result.strerror or result}"
            failures.append((str(path), reason))
            keys.append(None)
        else:
            keys.append(result)
    return keys


def _encode_missing(model: nn.Module, cache: FeatureCache, todo: dict[str, str], preprocess: Preprocessor,
                    pool: ThreadPoolExecutor, device: torch.device, batch_size: int, shard_size: int,
                    failures: list[tuple[str, str]], progress: bool,
                    on_batch: Callable[[int], None] | None) -> dict[str, str]:
    """Encode the ``todo`` images into the cache; returns ``{key: reason}`` of the unusable ones."""
    from tqdm import tqdm

    items = list(todo.items())
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    bad: dict[str, str] = {}
    pending_keys: list[str] = []
    pending: list[torch.Tensor] = []
    was_training = model.encoder.backbone.training
    model.encoder.backbone.eval()

    def flush() -> None:
        if pending_keys:
            cache.add(pending_keys, torch.cat(pending))
            pending_keys.clear()
            pending.clear()

    prefetch = ThreadPoolExecutor(1)  # loads the next batch (decoding on ``pool``) during the forward

    def submit(batch: list[tuple[str, str]]) -> Future:
        return prefetch.submit(load_pixels, [p for _, p in batch], preprocess, pool)

    done = 0
    bar = tqdm(total=len(items), desc="encoding images", unit="img", disable=not progress or not items,
               file=sys.stderr, smoothing=0.1)
    try:
        upcoming = submit(batches[0]) if batches else None
        for number, batch in enumerate(batches):
            pixels, kept, batch_failures = upcoming.result()
            upcoming = submit(batches[number + 1]) if number + 1 < len(batches) else None
            for (key, path), (_, reason) in zip((batch[i] for i in range(len(batch)) if i not in kept),
                                                 batch_failures):
                bad[key] = reason
                failures.append((path, reason))
            if pixels is not None:
                with torch.inference_mode():
                    out = model.encoder.backbone_features(pixels.to(device))
                pending_keys.extend(batch[i][0] for i in kept)
                pending.append(out.float().cpu())
                if len(pending_keys) >= shard_size:
                    flush()
            done += len(batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(done)
        flush()
    finally:
        flush()  # an interrupt keeps every finished row; a shard appears whole or not at all
        prefetch.shutdown(wait=True, cancel_futures=True)
        bar.close()
        model.encoder.backbone.train(was_training)
    return bad

