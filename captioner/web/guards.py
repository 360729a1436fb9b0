"""Limits of a public web front end: what a stranger's request may carry and how much it may ask.

- ``RequestSizeLimit``: an ASGI middleware that refuses request bodies over a cap *before* they are
  read (on ``Content-Length``, and while reading a body sent without one), with a tighter cap for
  JSON calls than for file uploads, and that refuses uploads while the upload folder is over its
  size cap. A 400 MB JSON body carrying a ``data:`` URL costs the server nothing.
- ``upload_source``: the only image sources an endpoint accepts from a request: a file inside the
  upload folder (resolved, so ``..`` and links cannot leave it) or the bytes of a ``data:`` URL of
  bounded encoded length. Every other path is refused with one message that says nothing about
  whether it exists.
- ``QueueShares``: per-client limits on a Gradio queue (how many of one client's requests may wait
  or run), counted from the moment a validator lets a request in.
- ``InFlight``: counts the requests being served and, when the last one ends, hands memory that the
  C allocator keeps back to the system (what large decodes and batched forward passes freed).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.core.images.memory import release_free_memory

MB = 1024 * 1024
MAX_INLINE_IMAGE_BYTES = 10 * MB  # an image sent inside a JSON body (data: URL), decoded size
MAX_JSON_BODY_BYTES = (MAX_INLINE_IMAGE_BYTES + 2) // 3 * 4 + MB  # its base64 text plus room for the rest
MAX_UPLOAD_REQUEST_BYTES = 200 * MB  # all files of one upload request together
MAX_UPLOAD_DIR_BYTES = 4 * 1024 * MB  # uploads are refused while the upload folder holds more

REFUSED_PATH = ("The image must come with the request (a file upload or a data: URL); "
                "files already on the server are not read.")
REFUSED_WEB_ADDRESS = "Web addresses are not fetched: send the image itself (a file upload or a data: URL)."

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class InputRefused(ValueError):
    """A request's input that the server will not read; the message is fit to show the sender."""


def _encoded_limit(decoded: int) -> int:
    return (decoded + 2) // 3 * 4


def upload_source(payload: Any, upload_dir: str | os.PathLike, *,
                  max_inline_bytes: int = MAX_INLINE_IMAGE_BYTES) -> str | bytes:
    """The image a request carries: a path inside ``upload_dir`` or the bytes of a ``data:`` URL.

    ``payload`` is a Gradio file payload (a dict with ``path`` and/or ``url``, with or without
    ``meta``) or a ``data:`` URL string. Raises ``InputRefused`` for anything else: paths outside
    ``upload_dir`` (or that are not regular files in it) all get ``REFUSED_PATH``; web addresses are
    not fetched; a ``data:`` URL longer than ``max_inline_bytes`` would decode to is refused on its
    encoded length, before decoding.
    """
    if isinstance(payload, str):
        payload = {"url": payload} if payload.startswith("data:") else {"path": payload}
    if not isinstance(payload, dict):
        raise InputRefused("No image was received: send a file upload or a data: URL.")
    path, url = payload.get("path"), payload.get("url")
    if isinstance(url, str) and url.startswith("data:") and not path:
        return _data_url_bytes(url, max_inline_bytes)
    if not isinstance(path, str) or not path:
        raise InputRefused("No image was received: send a file upload or a data: URL.")
    if path.startswith("data:"):
        return _data_url_bytes(path, max_inline_bytes)
    if _is_web_address(path):
        raise InputRefused(REFUSED_WEB_ADDRESS)
    return _path_in(path, upload_dir)


def _is_web_address(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _path_in(path: str, upload_dir: str | os.PathLike) -> str:
    try:
        root = Path(upload_dir).resolve()
        resolved = Path(path).resolve()
        inside = resolved != root and resolved.is_relative_to(root) and resolved.is_file()
    except (OSError, ValueError, RuntimeError):  # bad characters, link loops
        inside = False
    if not inside:
        raise InputRefused(REFUSED_PATH)
    return str(resolved)


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    header, comma, encoded = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise InputRefused("A data: URL must carry base64 data (data:image/png;base64,...).")
    if len(encoded) > _encoded_limit(max_bytes):
        raise InputRefused(f"The image sent inline is too large: {len(encoded) / MB:.1f} MB of base64 "
                           f"(limit {max_bytes / MB:.0f} MB of image data); upload it as a file instead.")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused("The image data in the data: URL is damaged (not valid base64).") from None


class RequestSizeLimit:
    """ASGI middleware: request bodies over ``max_body`` bytes (``max_upload`` for paths ending in
    ``upload_suffix``) are answered ``413`` before they are read; while ``upload_dir`` holds more
    than ``max_upload_dir`` bytes, uploads are answered ``507``."""

    def __init__(self, app: Callable, *, max_body: int = MAX_JSON_BODY_BYTES,
                 max_upload: int = MAX_UPLOAD_REQUEST_BYTES, upload_suffix: str = "/gradio_api/upload",
                 upload_dir: str | os.PathLike | None = None, max_upload_dir: int = MAX_UPLOAD_DIR_BYTES):
        self.app, self.max_body, self.max_upload, self.upload_suffix = app, max_body, max_upload, upload_suffix
        self.upload_dir, self.max_upload_dir = upload_dir, max_upload_dir
        self._dir_size = (0.0, 0)  # (when measured, bytes)
        self._dir_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        upload = scope.get("path", "").rstrip("/").endswith(self.upload_suffix)
        limit = self.max_upload if upload else self.max_body
        what = "upload" if upload else "request"
        if upload and self.upload_dir is not None and self.folder_bytes() > self.max_upload_dir:
            await _refuse(send, 507, "The server's upload space is full; try again in a few minutes.")
            return
        length = _content_length(scope)
        if length is not None and length > limit:
            await _refuse(send, 413, f"The {what} is too large: {length / MB:.1f} MB (limit {limit / MB:.0f} MB).")
            return
        received, refused, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not refused:
                    refused = True
                    if not started:
                        await _refuse(send, 413, f"The {what} is too large (limit {limit / MB:.0f} MB).")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the refusal was sent in place of the app's answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    def folder_bytes(self) -> int:
        """Bytes under ``upload_dir``, measured at most every 10 seconds."""
        with self._dir_lock:
            when, size = self._dir_size
            if time.monotonic() - when > 10:
                size = folder_bytes(self.upload_dir) if self.upload_dir is not None else 0
                self._dir_size = (time.monotonic(), size)
            return size


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


RESERVATION_S = 30.0  # how long an admitted request whose event never showed up is still counted


@dataclass
class _Reservation:
    request: Any  # the Starlette request, which Gradio's event and handler share
    concurrency_id: str
    client: str | None
    since: float = field(default_factory=time.monotonic)


class QueueShares:
    """Per-client limits on a Gradio queue, for its validators.

    Gradio runs a validator before its request joins the queue, so requests sent at the same moment
    would all be checked against the same queue and all pass. Each request let in is therefore
    counted from the moment it is let in: as a reservation until its event shows in the queue, its
    handler calls ``started``, or ``RESERVATION_S`` passes (the request never joined).
    ``watch(blocks)`` names the app whose queue is read."""

    def __init__(self) -> None:
        self.blocks: Any = None
        self._reserved: list[_Reservation] = []
        self._lock = threading.Lock()

    def watch(self, blocks: Any) -> None:
        self.blocks = blocks

    def admit(self, concurrency_id: str, request: Any, per_client: int, total: int | None = None) -> str | None:
        """None, and the request is counted, or why it is refused: its client already has
        ``per_client`` requests of this kind waiting or running, or all clients have ``total``."""
        client = client_host(request)
        with self._lock:
            events = queued_events(self.blocks, concurrency_id) if self.blocks is not None else []
            joined = {id(event.request) for event in events}
            now = time.monotonic()
            self._reserved = [r for r in self._reserved
                              if id(r.request) not in joined and now - r.since < RESERVATION_S]
            hosts = [client_host(event.request) for event in events] + [
                r.client for r in self._reserved if r.concurrency_id == concurrency_id]
            mine = sum(1 for host in hosts if client is not None and host == client)
            if mine >= per_client:
                return (f"Too many requests at once: you have {mine} of this kind waiting or running "
                        f"(limit {per_client}); wait for them to finish.")
            if total is not None and len(hosts) >= total:
                return f"The server is busy with {len(hosts)} of these jobs (limit {total}); try again in a minute."
            self._reserved.append(_Reservation(getattr(request, "request", request), concurrency_id, client))
            return None

    def started(self, request: Any) -> None:
        """The handler of ``request`` (a Gradio request) runs: its event is counted by the queue now."""
        inner = getattr(request, "request", request)
        with self._lock:
            self._reserved = [r for r in self._reserved if r.request is not inner]


class GradioChanged(RuntimeError):
    """Gradio's queue no longer has the shape ``queued_events`` reads."""


def queued_events(blocks: Any, concurrency_id: str) -> list[Any]:
    """The events waiting or running in ``blocks``' queue under ``concurrency_id``.

    Gradio has no public API for this, so this is the one place that reads its queue's internals
    (``blocks._queue``: ``event_queue_per_concurrency_id`` and ``active_jobs``, Gradio 6); a test
    reads a real queue through it. Raises ``GradioChanged`` when they are not there."""
    try:
        queue = blocks._queue
        waiting = queue.event_queue_per_concurrency_id.get(concurrency_id)
        events = list(waiting.queue) if waiting is not None else []
        running = [event for job in queue.active_jobs if job for event in job]
        return events + [event for event in running if event.concurrency_id == concurrency_id]
    except AttributeError as error:
        raise GradioChanged(f"Gradio's queue has changed ({error}); the per-client limits cannot read it") from error


def client_host(request: Any) -> str | None:
    """The client's address of a Gradio or Starlette request, or None."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) if client is not None else None


class InFlight:
    """``with in_flight:`` around each request; when the last request in flight ends, memory freed
    by all of them is handed back to the system (``release_free_memory``)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1
            last = self.count == 0
        if last:
            release_free_memory()
