"""What a training step reads: backbone outputs or images, and (image row, caption) pairs in batches.

``FeatureInputs`` holds precomputed backbone outputs (the feature cache's matrix); ``ImageInputs``
decodes image files every step (when the backbone is fine-tuned). ``Pairs`` is every (image row,
caption) pair as padded ids, and ``batch_loader`` a ``DataLoader`` over batches of pairs: worker
processes decode images, pinned memory feeds a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from captioner.core.errors import CaptionerError
from captioner.core.images.preprocess import load_pixels, preprocessor_for
from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import PAD_ID, Vocabulary

MAX_CAPTION_TOKENS = 64  # longer captions are cut (keeping <end>): one odd line cannot blow up a batch


class FeatureInputs:
    """Precomputed backbone outputs: a batch is a slice of the matrix.

    On CUDA the matrix lives on the GPU when it fits (batches are then gathered there), else in
    pinned memory, so that batches can be copied with ``non_blocking=True``.
    """

    def __init__(self, features: torch.Tensor, device: torch.device):
        if features.dim() != 2:
            raise ValueError(f"features must be an N x D matrix, got shape {tuple(features.shape)}")
        fits = device.type == "cuda" and features.numel() * 4 < 4 * 2**30
        self.features = features.float().to(device if fits else "cpu")
        if device.type == "cuda" and not fits:
            self.features = self.features.pin_memory()
        self.device = device
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def on_device(self) -> bool:
        return self.features.device.type == self.device.type

    def load(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
        """(backbone outputs of ``rows``, the rows kept, failures), where the matrix lives."""
        return self.features[rows.to(self.features.device)], rows, {}

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone outputs on the device, the rows they belong to)."""
        features, rows, _ = self.load(rows)
        return to_device(features, self.device), rows

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


class ImageInputs:
    """Image files, run through the whole encoder every step (for fine-tuning the backbone).

    An image that cannot be loaded is dropped from its batch and listed in ``failures``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], config: ModelConfig, device: torch.device,
                 workers: int = 2):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocessor_for(config)
        self.device = device
        self.workers = max(1, workers)
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    on_device = False

    @property
    def pool(self) -> ThreadPoolExecutor:
        """This process's decoding threads (a DataLoader worker makes its own)."""
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(self.workers))
        return self._pool[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def close(self) -> None:
        if self._pool is not None and self._pool[0] == os.getpid():
            self._pool[1].shutdown()
        self._pool = None

    def load(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, str]]:
        paths = [self.paths[i] for i in rows.tolist()]
        pixels, kept, failures = load_pixels(paths, self.preprocess, self.pool)
        failed = {paths[i]: why for i, why in failures}
        if pixels is None:
            return None, rows[:0], failed
        return pixels, rows[torch.tensor(kept, dtype=torch.long)], failed

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        pixels, kept, failed = self.load(rows)
        self.failures.update(failed)
        return (None if pixels is None else to_device(pixels, self.device)), kept

    def features_of(self, model: ShowAndTell, inputs: torch.Tensor) -> torch.Tensor:
        return model.encoder.backbone_features(inputs)


Inputs = FeatureInputs | ImageInputs


def embeddings_of(model: ShowAndTell, inputs: Inputs, batch: torch.Tensor) -> torch.Tensor:
    """The image embeddings the decoder reads: the encoder's projection of the batch's backbone outputs."""
    return model.encoder.project(inputs.features_of(model, batch))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to ``device``; asynchronously only from pinned memory (elsewhere it would not overlap)."""
    return tensor.to(device, non_blocking=tensor.device.type == "cpu" and tensor.is_pinned())


@dataclass
class Pairs:
    """Every (image row, caption) pair as a padded id matrix."""

    rows: torch.Tensor  # (P,) image row of each pair
    tokens: torch.Tensor  # (P, L) ids, <pad> after the end
    lengths: torch.Tensor  # (P,)

    @classmethod
    def build(cls, captions: Sequence[Sequence[str]], vocab: Vocabulary) -> Pairs:
        rows, encoded = [], []
        for row, image_captions in enumerate(captions):
            for caption in image_captions:
                ids = vocab.encode(caption)
                if len(ids) > MAX_CAPTION_TOKENS:
                    ids = ids[:MAX_CAPTION_TOKENS - 1] + ids[-1:]
                rows.append(row)
                encoded.append(ids)
        if not encoded:
            raise CaptionerError("there are no captions to train on")
        lengths = torch.tensor([len(ids) for ids in encoded])
        tokens = torch.full((len(encoded), int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, ids in enumerate(encoded):
            tokens[i, :len(ids)] = torch.tensor(ids)
        return cls(torch.tensor(rows), tokens, lengths)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[index]
        return self.rows[index], self.tokens[index, :int(lengths.max())], lengths


class _Batches(torch.utils.data.Dataset):
    """A training batch per item: the ``DataLoader``'s sampler hands over the pair indices of one batch.

    Items are built on the CPU (in worker processes when there are workers): the pairs, their
    inputs (backbone outputs or decoded images) and the rows that could be loaded.
    """

    def __init__(self, inputs: Inputs, pairs: Pairs):
        self.inputs, self.pairs = inputs, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: torch.Tensor) -> dict[str, Any]:
        rows, captions, lengths = self.pairs.select(index)
        unique = torch.unique(rows)
        inputs, kept, failed = self.inputs.load(unique)
        if inputs is not None and len(kept) < len(unique):  # images that failed to load: drop their pairs
            keep = torch.isin(rows, kept)
            rows, captions, lengths = rows[keep], captions[keep], lengths[keep]
        return {"inputs": inputs, "kept": kept, "rows": rows, "captions": captions, "lengths": lengths,
                "failed": failed}


def _identity(item: Any) -> Any:
    return item


def batch_loader(inputs: Inputs, pairs: Pairs, batches: list[torch.Tensor], device: torch.device,
            workers: int | None) -> torch.utils.data.DataLoader:
    """Batches in the given order; worker processes decode images, pinned memory feeds a GPU."""
    if workers is None:  # features already in memory gain nothing from worker processes
        workers = 0 if isinstance(inputs, FeatureInputs) else min(4, max(0, (os.cpu_count() or 1) - 1))
    if inputs.on_device:
        workers = 0  # a GPU tensor cannot be indexed from another process
    pin = device.type == "cuda" and not inputs.on_device
    return torch.utils.data.DataLoader(_Batches(inputs, pairs), sampler=batches, batch_size=None,
                                       collate_fn=_identity, num_workers=workers, pin_memory=pin,
                                       persistent_workers=False)


def epoch_batches(pairs: Pairs, shuffle: torch.Generator, batch_size: int) -> list[torch.Tensor]:
    """One epoch's batches of pair indices, in a random order drawn from ``shuffle``."""
    order = torch.randperm(len(pairs), generator=shuffle)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one row
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches
