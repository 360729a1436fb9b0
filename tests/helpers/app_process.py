"""``python app.py`` in a subprocess on a free port, driven over plain HTTP (httpx) as a stranger
would, with its resident memory read by psutil: for tests that attack the public app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.helpers.app import free_port
from tests.helpers.paths import ROOT

FILE_META = {"_type": "gradio.FileData"}


class AppProcess:
    """The app as a Space runs it, with its own upload folder under ``folder``."""

    def __init__(self, model: Path, folder: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.api = f"{self.url}gradio_api"
        self.upload_dir = folder / "gradio"
        self.log_path = folder / "app.log"
        self._log = open(self.log_path, "w+")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--model", str(model)], cwd=folder, stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                 "GRADIO_TEMP_DIR": str(self.upload_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                 **(env or {})})
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"{self.url}config", timeout=5).raise_for_status()
                return
            except (httpx.HTTPError, ValueError):
                if self.process.poll() is not None:
                    raise RuntimeError(f"app.py exited:\n{self.log_path.read_text()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("app.py did not answer within 180 s") from None
                time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def upload(self, data: bytes, name: str, headers: dict | None = None) -> dict:
        response = httpx.post(f"{self.api}/upload", files={"files": (name, data)}, headers=headers, timeout=120)
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": FILE_META}

    def call(self, data: list, headers: dict | None = None, api: str = "caption") -> tuple[str, object]:
        """POST /call/<api> and read its answer: ("ok", the first output) or ("error", the message)."""
        response = httpx.post(f"{self.api}/call/{api}", json={"data": data}, headers=headers, timeout=300)
        if response.status_code != 200:
            return "error", response.text
        event_id = response.json()["event_id"]
        text = httpx.get(f"{self.api}/call/{api}/{event_id}", headers=headers, timeout=600).text
        event, _, payload = text.strip().rpartition("event: ")[2].partition("\ndata: ")
        if event == "complete":
            return "ok", json.loads(payload)[0]
        return "error", (json.loads(payload) or {}).get("error") if payload.strip() != "null" else None


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
