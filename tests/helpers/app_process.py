"""The real ``python app.py`` in a child process, driven over HTTP as a stranger would drive it:
calls, the page's queue route, raw sockets, and its memory read with psutil."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

from tests.helpers.app import free_port
from tests.helpers.gradio_http import FILE_META, call_answer, detail, queue_answer
from tests.helpers.paths import ROOT


class Server:
    """``python app.py`` in a subprocess with its own upload folder."""

    def __init__(self, model: Path, folder: Path, *, preexec=None, **environ: str):
        """``environ``: variables set for the app; ``preexec``: run in the child before it starts
        (e.g. to lower its open-file limit)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.api = f"{self.url}gradio_api"
        self.folder = folder
        self.upload_dir = folder / "gradio"
        self.temp_dir = folder / "tmp"  # where the app's results folder (captioner-app-*) is made
        self.temp_dir.mkdir(exist_ok=True)
        env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
               "GRADIO_TEMP_DIR": str(self.upload_dir), "TMPDIR": str(self.temp_dir), "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1", **environ}
        self.log_path = folder / "app.log"
        self._log = open(self.log_path, "w+")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(model)], cwd=folder,
                                        env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=preexec)
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 180
        while True:
            try:
                self.config = httpx.get(f"{self.url}config", timeout=5).json()
                break
            except (httpx.HTTPError, ValueError):
                if self.process.poll() is not None:
                    raise RuntimeError(f"app.py exited:\n{self.log_path.read_text()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("app.py did not answer within 180 s") from None
                time.sleep(0.5)
        self.fn = {d["api_name"]: d["id"] for d in self.config["dependencies"]}

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def results_dir(self) -> Path:
        """The app's folder for overlays and batch downloads."""
        [results] = self.temp_dir.glob("captioner-app-*")
        return results

    def upload(self, data: bytes, name: str, headers: dict | None = None) -> dict:
        response = httpx.post(f"{self.api}/upload", files={"files": (name, data)}, headers=headers, timeout=120)
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": FILE_META}

    def call(self, data: list, headers: dict | None = None, raw: bytes | None = None,
             api: str = "caption", output: int | None = 0) -> tuple[str, str]:
        """POST /call/<api> and read the answer: ("ok", output number ``output``, or all of them for
        None) or ("error", message)."""
        status, event_id = self.submit(data, headers, raw, api)
        return self.answer(event_id, api, output) if status == "queued" else (status, event_id)

    def submit(self, data: list, headers: dict | None = None, raw: bytes | None = None,
               api: str = "caption") -> tuple[str, str]:
        """POST /call/<api>: ("queued", event id) or ("error", why the queue refused it)."""
        body = raw if raw is not None else json.dumps({"data": data}).encode()
        response = httpx.post(f"{self.api}/call/{api}", content=body, timeout=300,
                              headers={"content-type": "application/json", **(headers or {})})
        if response.status_code != 200:
            return "error", detail(response)
        return "queued", response.json()["event_id"]

    def answer(self, event_id: str, api: str = "caption", output: int | None = 0) -> tuple[str, object]:
        """The answer to a submitted call, read as ``call`` reads it."""
        status, outputs = call_answer(self.api, api, event_id)
        return (status, outputs if output is None else outputs[output]) if status == "ok" else (status, outputs)

    def join(self, fn: str, data: list, headers: dict | None = None, wait: bool = True) -> tuple[str, object]:
        """The page's route (POST /queue/join, then the session's event stream) for event ``fn``."""
        session = uuid.uuid4().hex
        body = {"data": data, "fn_index": self.fn[fn], "session_hash": session, "event_data": None, "trigger_id": None}
        response = httpx.post(f"{self.api}/queue/join", json=body, headers=headers, timeout=60)
        if response.status_code != 200:
            return "error", detail(response)
        if not wait:
            return "queued", session
        return queue_answer(self.api, session)


class PeakRSS:
    """Samples a process's resident memory every 10 ms while in the ``with`` block."""

    def __init__(self, process: psutil.Process):
        self.process, self.peak, self._stop = process, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def raw_post(port: int, path: str, headers: dict[str, str], body_chunks,
              chunked: bool = False) -> tuple[int, str, int]:
    """POST over a raw socket, sending ``body_chunks`` until the server answers; returns
    (status, body, bytes of body sent). The server may answer and close before the body is sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "\r\n"
    sent = 0
    sock.sendall(head.encode())
    try:
        for chunk in body_chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            sent += len(chunk)
            sock.settimeout(0.0)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered
            except BlockingIOError:
                pass
            finally:
                sock.settimeout(60)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            answer += data
    sock.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace"), sent


def poll(ask, until, timeout_s: float = 30):
    """``ask()`` every half second until ``until(answer)`` holds; returns the last answer."""
    deadline = time.monotonic() + timeout_s
    while not until(answer := ask()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return answer
