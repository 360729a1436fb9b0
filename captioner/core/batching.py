"""Requests that wait together share forward passes: one pass per group of equal decoding settings.

Front ends that batch concurrent requests (the web app's ``SharedCaptioner``, the Ray Serve
replica) hand their prepared images here. Images whose resolved ``DecodeOptions`` are equal run as
one batch (settings change the search, so they cannot share one); results come back in the
callers' order, and a pass that fails hands its error to its own requests only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

import torch

from captioner.core.options import DecodeOptions


class Prepared(Protocol):
    """A request ready for the model: one preprocessed image ``(3, H, W)`` and resolved settings."""

    @property
    def pixels(self) -> torch.Tensor: ...

    @property
    def options(self) -> DecodeOptions: ...


class PreparedImage(NamedTuple):
    pixels: torch.Tensor
    options: DecodeOptions


P = TypeVar("P", bound=Prepared)
R = TypeVar("R")


def groups_by_options(requests: Sequence[Prepared], max_batch_size: int | None = None) -> list[list[int]]:
    """The indices of ``requests`` grouped by equal ``options`` (in order of first appearance), each
    group cut into batches of at most ``max_batch_size`` (None: no cut)."""
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    groups: dict[DecodeOptions, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.options, []).append(index)
    size = max_batch_size or max(1, len(requests))
    return [members[start:start + size] for members in groups.values() for start in range(0, len(members), size)]


def run_by_options(requests: Sequence[P], forward: Callable[[torch.Tensor, DecodeOptions, Sequence[P]], Sequence[R]],
                   max_batch_size: int | None = None) -> list[R | Exception]:
    """Run ``forward(pixels, options, group)`` once per group of ``requests`` with equal options
    (``pixels``: the group's images stacked, ``(B, 3, H, W)``) and return one entry per request, in
    the order given: its result, or the exception its group's pass raised."""
    results: list[R | Exception] = [None] * len(requests)  # type: ignore[list-item]
    for members in groups_by_options(requests, max_batch_size):
        group = [requests[i] for i in members]
        try:
            outputs: Sequence[R | Exception] = forward(torch.stack([r.pixels for r in group]), group[0].options, group)
        except Exception as error:  # noqa: BLE001 - handed to the requests of this pass, whose callers raise it
            outputs = [error] * len(group)
        for index, output in zip(members, outputs):
            results[index] = output
    return results
