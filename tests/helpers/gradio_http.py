"""A Gradio app driven over plain HTTP the way a stranger drives it: the ``/call`` API route, the
queue route the page uses, uploads. Answers are ("ok", outputs) or ("error", message)."""

from __future__ import annotations

import json
import uuid

import httpx

FILE_META = {"_type": "gradio.FileData"}


def detail(response: httpx.Response) -> str:
    """The message of a refused request (``detail``, or a validator's answer per input)."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    found = body.get("detail", body.get("error")) if isinstance(body, dict) else body
    if isinstance(found, list):
        return " ".join(item.get("message", "") for item in found if not item.get("is_valid", True))
    return str(found)


def call_answer(api: str, name: str, event_id: str, headers: dict | None = None,
                timeout: float = 300) -> tuple[str, object]:
    """The event stream of a ``/call/<name>`` request: ("ok", its outputs) or ("error", message)."""
    text = httpx.get(f"{api}/call/{name}/{event_id}", headers=headers, timeout=timeout).text
    event, _, payload = text.strip().rpartition("event: ")[2].partition("\ndata: ")
    if event == "complete":
        return "ok", json.loads(payload)
    return "error", (json.loads(payload) or {}).get("error") if payload.strip() != "null" else None


def queue_answer(api: str, session: str, timeout: float = 300) -> tuple[str, object]:
    """The event stream of a ``/queue/join`` session: ("ok", its outputs) or ("error", message)."""
    with httpx.stream("GET", f"{api}/queue/data", params={"session_hash": session}, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if message.get("success"):
                        return "ok", message["output"]["data"]
                    return "error", (message.get("output") or {}).get("error")
    return "error", None


class GradioHTTP:
    def __init__(self, url: str, timeout: float = 120):
        self.url = url.rstrip("/") + "/"
        self.api = f"{self.url}gradio_api"
        self.timeout = timeout
        self.config = httpx.get(f"{self.url}config", timeout=timeout).json()
        self.fn = {d["api_name"]: d["id"] for d in self.config["dependencies"]}

    def upload(self, data: bytes, name: str) -> dict:
        response = httpx.post(f"{self.api}/upload", files={"files": (name, data)}, timeout=self.timeout)
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": FILE_META}

    def call(self, data: list, api: str = "caption") -> tuple[str, object]:
        """POST /call/<api>, then read its event stream: ("ok", outputs) or ("error", message)."""
        response = httpx.post(f"{self.api}/call/{api}", content=json.dumps({"data": data}), timeout=self.timeout,
                              headers={"content-type": "application/json"})
        if response.status_code != 200:
            return "error", detail(response)
        return call_answer(self.api, api, response.json()["event_id"], timeout=self.timeout)

    def join(self, fn: str, data: list) -> tuple[str, object]:
        """The page's route: POST /queue/join for event ``fn``, then the session's event stream."""
        session = uuid.uuid4().hex
        body = {"data": data, "fn_index": self.fn[fn], "session_hash": session, "event_data": None,
                "trigger_id": None}
        response = httpx.post(f"{self.api}/queue/join", json=body, timeout=self.timeout)
        if response.status_code != 200:
            return "error", detail(response)
        return queue_answer(self.api, session, self.timeout)
