"""What one stranger's request to the Serve REST API may cost a replica, and how a hung replica shows.

- ``body_length`` and ``read_image``: the image of a ``POST /v1/caption`` request, read in chunks
  as they arrive. The request must declare its length (``Content-Length``); the caller reserves
  that length from a ``BodyBudget`` shared by all requests of the replica before the first byte is
  read, so the bodies held at once never exceed the budget: a request that does not fit is
  answered ``503`` at once.
- ``ClientShares``: how many requests one client address may have in flight (``429`` beyond).
- ``Watchdog``: when each piece of model work started; the replica's health check fails while one
  has run past its limit, and Ray Serve then replaces the replica.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request

from captioner.core.errors import CaptionerError

MB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # room for multipart headers and boundaries around one image


class RequestError(CaptionerError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BodyBudget:
    """Bytes of request bodies a replica holds at once. All callers run on the replica's event loop,
    so a plain counter is enough."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"the body budget must be at least 1 byte, got {capacity}")
        self.capacity, self.in_use, self.peak = capacity, 0, 0

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes for the ``with`` block; ``RequestError`` (503) when they do not fit now."""
        if self.in_use + size > self.capacity:
            raise RequestError("The server is receiving too many images at once; try again in a few seconds.", 503)
        self.in_use += size
        self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.in_use -= size


class ClientShares:
    """Requests in flight per client address, capped at ``per_client``."""

    def __init__(self, per_client: int):
        self.per_client = per_client
        self._counts: Counter[str] = Counter()

    @contextmanager
    def admit(self, request: Request) -> Iterator[None]:
        client = request.client.host if request.client else "unknown"
        if self._counts[client] >= self.per_client:
            raise RequestError(f"Too many requests at once: you have {self._counts[client]} in progress "
                               f"(limit {self.per_client}); wait for them to finish.", 429)
        self._counts[client] += 1
        try:
            yield
        finally:
            self._counts[client] -= 1
            if not self._counts[client]:
                del self._counts[client]


class Watchdog:
    """Start times of the model work running in a replica's threads."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._started: dict[int, float] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around one piece of work (a decode, a forward pass)."""
        key = next(self._ids)
        with self._lock:
            self._started[key] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._started[key]

    def longest_s(self) -> float:
        """How long the oldest piece of work still running has run (0 when none runs)."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def check(self) -> None:
        """Raise ``RuntimeError`` while a piece of work has run longer than ``limit_s``."""
        longest = self.longest_s()
        if longest > self.limit_s:
            raise RuntimeError(f"model work has been running for {longest:.0f} s (limit {self.limit_s:g} s); "
                               "this replica is stuck")


def body_length(request: Request, limit: int) -> int:
    """The length a ``/v1/caption`` request declares for its body, checked before any of it is
    read: missing (411, so that it can be reserved from the budget) or over ``limit`` plus room
    for a multipart form's headers (413)."""
    text = request.headers.get("content-length", "")
    if not text.isdigit():
        raise RequestError("send the image with a Content-Length header (chunked uploads are not accepted)", 411)
    declared = int(text)
    if declared > limit + (MULTIPART_SLACK if _is_multipart(request) else 0):
        raise RequestError(f"upload too large: {declared / MB:.1f} MB (limit {limit / MB:.1f} MB)", 413)
    return declared


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def read_image(request: Request, limit: int) -> bytes:
    """The image of a request whose length ``body_length`` accepted: the raw body, or a multipart
    field ``image`` / ``file`` (400 when a form holds none)."""
    cap = limit + (MULTIPART_SLACK if _is_multipart(request) else 0)
    return await (_read_form(request, limit, cap) if _is_multipart(request) else _read_body(request, cap))


async def _read_body(request: Request, cap: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:  # more than the declared length (which is at most cap)
            raise RequestError(f"upload too large (limit {cap / MB:.1f} MB)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: Request, limit: int, cap: int) -> bytes:
    """The image field of a multipart form, parsed as the body streams in (Starlette keeps file
    fields over 1 MB on disk, not in memory)."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    received = 0
    receive = request.receive

    async def counted() -> Any:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > cap:
            raise RequestError(f"upload too large (limit {limit / MB:.1f} MB)", 413)
        return message

    form_request = Request(request.scope, counted)
    try:
        form = await form_request.form(max_files=1, max_fields=8)
    except HTTPException as error:  # a malformed form: Starlette's own message
        raise RequestError(f"the multipart form could not be read: {error.detail}") from None
    try:
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError("no image was received: send it as the request body or as a multipart file "
                               "field named 'image'")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise RequestError(f"upload too large (limit {limit / MB:.1f} MB)", 413)
    return data
