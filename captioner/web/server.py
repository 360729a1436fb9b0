"""The HTTP server of ``python app.py``: uvicorn serving the Gradio page, with the connection limits a
public server needs and that Gradio's ``launch`` cannot set (it builds uvicorn's settings itself).

- A request's head (request line and headers) must arrive within ``HEAD_TIMEOUT_S`` of the connection
  opening or of the previous answer; a client that sends nothing, or trickles its headers, is cut off.
- At most ``max_connections`` connections are open at once (fewer when the process may open fewer
  files), and at most ``MAX_CONNECTIONS_PER_PEER`` from one address that is not a trusted proxy
  (``FORWARDED_ALLOW_IPS``, as uvicorn reads it: loopback by default). Connections over a cap are
  closed as soon as they are accepted, before anything is read.
- Idle keep-alive connections close after ``KEEP_ALIVE_S``.

The page is mounted with ``gr.mount_gradio_app``; the app's middlewares (``guards``) check every
request's files before Gradio sees them, as they do under any server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import resource
import socket
import threading
import time
from collections import Counter
from typing import Any

import gradio as gr
import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 4096
MAX_CONNECTIONS_PER_PEER = 256
FILES_KEPT_FREE = 256  # file descriptors left for the app itself (uploads, model files, logs)
DEFAULT_PORT = 7860


class ConnectionLimits:
    """The open connections of one server, counted in total and per peer address."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, per_peer: int = MAX_CONNECTIONS_PER_PEER,
                 trusted: str | None = None):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - FILES_KEPT_FREE if soft != resource.RLIM_INFINITY else max_connections
        self.max_connections, self.per_peer = max(1, min(max_connections, room)), per_peer
        raw = trusted if trusted is not None else os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
        self.trusted = [item.strip() for item in raw.split(",") if item.strip()]
        self.total = 0
        self.peers: Counter[str] = Counter()
        self.refused = 0  # connections closed at once for being over a cap

    def admit(self, peer: str | None) -> bool:
        if self.total >= self.max_connections or (
                peer is not None and not self._trusted(peer) and self.peers[peer] >= self.per_peer):
            self.refused += 1
            return False
        self.total += 1
        if peer is not None:
            self.peers[peer] += 1
        return True

    def release(self, peer: str | None) -> None:
        self.total -= 1
        if peer is not None:
            self.peers[peer] -= 1
            if self.peers[peer] <= 0:
                del self.peers[peer]

    def _trusted(self, peer: str) -> bool:
        if "*" in self.trusted:
            return True
        for item in self.trusted:
            try:
                if ipaddress.ip_address(peer) in ipaddress.ip_network(item, strict=False):
                    return True
            except ValueError:
                continue
        return False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and the caps of ``limits``
    (a class attribute: ``protocol_with`` makes a subclass per server)."""

    limits: ConnectionLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        address = get_remote_addr(transport)
        self._peer = address[0] if address else None
        self._counted = self.limits.admit(self._peer)
        self._head_deadline: asyncio.TimerHandle | None = None
        if not self._counted:
            transport.abort()  # over a cap: the socket is freed at once, nothing is read
            return
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._head_arrived()
        self.limits.release(self._peer)
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def asgi_app(demo: gr.Blocks, launch_options: dict[str, Any]) -> FastAPI:
    """The page as an ASGI app, with the app's middlewares (``launch_options`` of ``web.app``)."""
    options = dict(launch_options)
    options.pop("share", None)
    return gr.mount_gradio_app(FastAPI(), demo, path="/", **options)


class Server:
    """uvicorn serving ``demo`` on ``host``:``port`` with ``GuardedH11Protocol``; ``run()`` blocks until
    stopped (Ctrl-C), ``start()`` serves from a thread until ``stop()``."""

    def __init__(self, demo: gr.Blocks, launch_options: dict[str, Any], host: str | None = None,
                 port: int | None = None, limits: ConnectionLimits | None = None):
        self.host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
        self.port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 0) or free_port_from(self.host, DEFAULT_PORT)
        self.limits = limits or ConnectionLimits()
        config = uvicorn.Config(asgi_app(demo, launch_options), host=self.host, port=self.port, log_level="warning",
                                http=protocol_with(self.limits), timeout_keep_alive=KEEP_ALIVE_S,
                                timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        print(f"* Running on local URL:  {self.url}", flush=True)
        self.uvicorn.run()

    def start(self) -> str:
        self._thread = threading.Thread(target=self.uvicorn.run, name="captioner-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def free_port_from(host: str, first: int, tries: int = 100) -> int:
    """The first port from ``first`` on that ``host`` can listen on (as Gradio picks one)."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
                return port
            except OSError:
                continue
    raise OSError(f"no free port from {first} to {first + tries - 1} on {host}; set GRADIO_SERVER_PORT")
