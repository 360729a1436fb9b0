"""Server paths sent as file inputs, refused before Gradio sees them.

Gradio copies the file that a ``meta``-marked file payload names into its cache before any event
handler runs, and checks that name itself only in an app started with ``launch``
(``Blocks.has_launched``), never in one mounted with ``gr.mount_gradio_app`` (as under Ray Serve).
``FileInputGuard`` reads each JSON request body first and refuses it when a file payload in it, or
text sent for a file input, names anything but a regular file inside the upload folder, so the same
rule (``guards.upload_source``) holds however the app is served, with one message for every path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from captioner.web.guards import MAX_JSON_BODY_BYTES, MB, InputRefused, Message, Receive, Scope, Send, upload_source


def file_reference_refusal(payload: dict, upload_dir: str | os.PathLike) -> str | None:
    """Why a file payload of a request body may not be read (``guards.REFUSED_PATH``, or
    ``REFUSED_WEB_ADDRESS`` for a web address, which Gradio would download), or None when it
    names nothing on the server (a ``data:`` URL) or a regular file inside ``upload_dir``. Only
    names are looked at: nothing is opened, so devices, pipes and ``/proc`` cost nothing."""
    path, url = payload.get("path"), payload.get("url")
    reference = path if isinstance(path, str) and path else url if isinstance(url, str) and url else None
    if reference is None or reference.startswith("data:"):
        return None  # no file named here; the handler checks what the payload carries
    try:
        upload_source({"path": reference}, upload_dir)
    except InputRefused as error:
        return str(error)
    return None


def file_payloads(value: Any) -> list[dict]:
    """Every dict in a parsed JSON body that names a file (a ``path`` or ``url`` text), at any depth."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str) or isinstance(item.get("url"), str):
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class FileInputGuard:
    """ASGI middleware: a request body (JSON, up to ``max_body`` bytes) with a file payload that
    names anything but a regular file inside ``upload_dir`` is refused with ``REFUSED_PATH`` before
    the app reads it (see ``file_reference_refusal``): for a Gradio event's inputs (``data``) in the
    shape of a validator's refusal (``422``, one entry per input, as the app's per-client caps
    answer), else ``400``. Bodies that are not JSON, and uploads (paths ending in
    ``upload_suffix``), pass unchanged."""

    def __init__(self, app: Callable, *, upload_dir: str | os.PathLike, max_body: int = MAX_JSON_BODY_BYTES,
                 upload_suffix: str = "/gradio_api/upload"):
        self.app, self.upload_dir, self.max_body, self.upload_suffix = app, upload_dir, max_body, upload_suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS")
                or scope.get("path", "").rstrip("/").endswith(self.upload_suffix)):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                await _answer(scope, send, 413, f"The request is too large (limit {self.max_body / MB:.0f} MB).")
                return
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)  # the parser Starlette's request.json() uses, so both read the same
        except (ValueError, UnicodeDecodeError):
            parsed = None
        refused = self.refused_inputs(scope, parsed)
        if refused:
            data = parsed.get("data") if isinstance(parsed, dict) else None
            if None in refused or not isinstance(data, list):
                await _answer(scope, send, 400, next(iter(refused.values())))
            else:
                await _answer(scope, send, 422, [{"__type__": "validate", "is_valid": i not in refused,
                                           "message": refused.get(i, "")} for i in range(len(data))])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def refused_inputs(self, scope: Scope, body: Any) -> dict[int | None, str]:
        """Why inputs of ``body`` are refused, by their position in ``data`` (None: elsewhere in it)."""
        data = body.get("data") if isinstance(body, dict) else None
        inputs = data if isinstance(data, list) else []
        rest = {key: value for key, value in body.items() if key != "data"} if isinstance(body, dict) else body
        file_inputs = _file_input_positions(scope, body) if inputs else set()
        refused: dict[int | None, str] = {}
        for position, value in [*enumerate(inputs), (None, rest)]:
            payloads = file_payloads(value)
            if position in file_inputs:  # text sent in place of a file payload: a path, for this check
                payloads += [{"path": item} for item in (value if isinstance(value, list) else [value])
                             if isinstance(item, str)]
            for payload in payloads:
                refusal = file_reference_refusal(payload, self.upload_dir)
                if refusal:
                    refused[position] = refusal
                    break
        return refused


def _file_input_positions(scope: Scope, body: dict) -> set[int]:
    """The positions of file inputs (components with a data model: images, files, galleries) among
    the inputs of the Gradio event a request calls (``/queue/join`` by ``fn_index``, ``/call/NAME``,
    ``/run/NAME``), so that a path sent as bare text gets the same answer as one in a payload
    (Gradio would refuse it with a message that echoes it). The event is looked up in the Blocks of
    the Gradio app serving the request."""
    get_blocks = getattr(scope.get("app"), "get_blocks", None)
    if get_blocks is None:
        return set()
    functions = get_blocks().fns  # {fn_index: event}
    route, index = scope.get("path", "").rstrip("/"), body.get("fn_index")
    if route.endswith("/queue/join"):
        event = functions.get(index) if isinstance(index, int) else None
    else:
        name = re.search(r"/(?:call|run)/([^/]+)$", route)
        event = next((fn for fn in functions.values() if name and fn.api_name == name[1]), None)
    inputs = event.inputs if event is not None else []
    return {i for i, component in enumerate(inputs) if getattr(component, "data_model", None) is not None}


async def _answer(scope: Scope, send: Send, status: int, detail: str | list) -> None:
    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})(scope, no_body, send)
