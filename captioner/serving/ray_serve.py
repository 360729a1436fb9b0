"""The caption service on Ray Serve: replicas behind one HTTP endpoint, requests batched per forward pass.

    serve run captioner.serving.ray_serve:app                      # defaults ($CAPTIONER_MODEL or bundled)
    serve run captioner.serving.ray_serve:build_app max_batch_size=16 max_replicas=4
    python -m captioner serve --replicas 2                           # the same from the command line

Each replica loads the model once. ``POST /v1/caption`` takes one image (the raw request body, or a
multipart field named ``image`` or ``file``) with decoding settings as query parameters
(``beam_size``, ``num_candidates``, ``max_length``, ``length_penalty``, ``top_classes``,
``no_repeat_ngram``) and answers with the library's result schema as JSON. Each request decodes and
checks its own image (a bad one gets HTTP 400 with the loader's message and costs no one else
anything); ``@serve.batch`` then gathers the prepared images of concurrent requests and runs them as
one forward pass (``Captioner.pipeline.caption_batch``). ``GET /healthz`` reports the model and how many
forward passes served how many requests. The Gradio app (``captioner.web.app.build_demo``) is mounted at ``/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no calls home
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import asyncio  # noqa: E402
import threading  # noqa: E402
from collections import deque  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402  (module level: FastAPI resolves annotations here)
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402

from captioner.core.errors import CaptionerError  # noqa: E402
from captioner.core.images.decode import MAX_IMAGE_BYTES  # noqa: E402
from captioner.core.options import DecodeOptions  # noqa: E402

MAX_BATCH_SIZE = 8  # prepared images per forward pass
BATCH_WAIT_S = 0.01  # how long the first request of a batch waits for company
MULTIPART_SLACK = 64 * 1024  # room for multipart headers and boundaries around one image
OPTION_NAMES = ("beam_size", "num_candidates", "max_length", "length_penalty", "top_classes", "no_repeat_ngram")


class RequestError(CaptionerError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_options(query: dict[str, str]) -> DecodeOptions:
    """Decoding settings from query parameters; numbers are parsed, the library checks the ranges."""
    unknown = sorted(set(query) - set(OPTION_NAMES))
    if unknown:
        raise RequestError(f"unknown query parameter {unknown[0]!r}; the decoding settings are "
                           f"{', '.join(OPTION_NAMES)}", 422)
    values: dict[str, Any] = {}
    for name, text in query.items():
        try:
            values[name] = int(text)
        except ValueError:
            try:
                values[name] = float(text)
            except ValueError:
                values[name] = text  # refused by DecodeOptions.resolved with the setting's name
    return DecodeOptions(**values)


@serve.deployment(max_ongoing_requests=64)
@serve.ingress()
class CaptionService:
    """One replica: the model loaded once, the REST routes, and the Gradio UI."""

    def __init__(self, model: str | None = None, device: str = "cpu", max_batch_size: int = MAX_BATCH_SIZE,
                 batch_wait_s: float = BATCH_WAIT_S, threads: int = 1, ui: bool = True,
                 max_upload_bytes: int = MAX_IMAGE_BYTES, backend: str | None = None, precision: str | None = None):
        import torch

        from captioner.core.inference import load_captioner

        torch.set_num_threads(max(1, threads))
        self.model, self.backend, self.ui, self.max_upload_bytes = model, backend, ui, max_upload_bytes
        self.precision = precision
        self.captioner = load_captioner(model, device, backend, precision)
        self.max_batch_size = max_batch_size
        self.caption_batch.set_max_batch_size(max_batch_size)
        self.caption_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.forward_passes = self.requests = self.largest_batch = 0
        self.recent_batches: deque[int] = deque(maxlen=100)
        self._stats_lock = threading.Lock()

    def __serve_build_asgi_app__(self):
        return build_http_app(self)

    async def caption_image(self, data: bytes, options: DecodeOptions):
        """Decode and check one image (``ImageError`` for a bad one), then caption it in a shared pass."""
        options = options.resolved(self.captioner.config.max_length)  # ValueError names a bad setting
        pixels = await asyncio.get_running_loop().run_in_executor(None, self.captioner.pipeline.prepare, data)
        return await self.caption_batch((pixels, options))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def caption_batch(self, requests: list[tuple[Any, DecodeOptions]]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self._forward, requests)

    def _forward(self, requests: list[tuple[Any, DecodeOptions]]) -> list[Any]:
        """Requests with the same settings share one ``caption_batch`` call."""
        import torch

        results: list[Any] = [None] * len(requests)
        groups: dict[DecodeOptions, list[int]] = {}
        for index, (_, options) in enumerate(requests):
            groups.setdefault(options, []).append(index)
        for options, members in groups.items():
            batch = torch.stack([requests[i][0] for i in members])
            for index, result in zip(members, self.captioner.pipeline.caption_batch(batch, options)):
                results[index] = result
            with self._stats_lock:
                self.forward_passes += 1
                self.requests += len(members)
                self.largest_batch = max(self.largest_batch, len(members))
                self.recent_batches.append(len(members))
        return results

    def health(self) -> dict[str, Any]:
        with self._stats_lock:
            return {"status": "ok", "model": self.captioner.loaded.source, "device": str(self.captioner.device),
                    "backend": self.captioner.backend, "precision": self.captioner.precision,
                    "max_batch_size": self.max_batch_size,
                    "forward_passes": self.forward_passes, "requests": self.requests,
                    "largest_batch": self.largest_batch, "recent_batches": list(self.recent_batches)}


def build_http_app(service: CaptionService) -> FastAPI:
    """The replica's FastAPI app: the REST routes, then (with ``service.ui``) the Gradio app at ``/``."""
    from captioner.core.errors import ImageError

    http = FastAPI(title="captioner", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)

    def refuse(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @http.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """The model, and how many forward passes served how many requests."""
        return service.health()

    @http.post("/v1/caption")
    async def caption(request: Request):
        """Caption one image: the request body, or a multipart field ``image`` / ``file``.
        Decoding settings are query parameters. Answers with the library's result schema."""
        try:
            options = decode_options(dict(request.query_params))
            data = await read_image(request, service.max_upload_bytes)
            result = await service.caption_image(data, options)
        except RequestError as error:
            return refuse(str(error), error.status)
        except ImageError as error:
            return refuse(str(error), 400)
        except ValueError as error:  # a decoding setting out of range (the message names it)
            return refuse(str(error), 422)
        return result.to_dict()

    if service.ui:
        import gradio as gr

        from captioner.web import app as web_app

        demo = web_app.build_demo(service.model, batch_size=service.max_batch_size, backend=service.backend,
                                  precision=service.precision)
        options = web_app.launch_options()
        gr.mount_gradio_app(http, demo, path="/", max_file_size=options["max_file_size"], theme=options["theme"],
                            css=options["css"], app_kwargs=options.get("app_kwargs"))  # the app's request limits
    return http


async def read_image(request: Request, limit: int) -> bytes:
    """The image in a request (raw body or multipart field), refused above ``limit`` bytes before it is
    all read (HTTP 413), or when a multipart form holds none (HTTP 400). An empty image is left to the
    loader, which refuses it with its own message."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise RequestError(f"upload too large: {int(declared) / 2 ** 20:.1f} MB (limit {limit / 2 ** 20:.1f} MB)", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise RequestError(f"upload too large (limit {limit / 2 ** 20:.1f} MB)", 413)
    if multipart:
        request._body = bytes(body)  # Starlette parses the form from the body already read
        form = await request.form(max_files=1, max_fields=len(OPTION_NAMES) + 1)
        upload = form.get("image") or form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError("no image was received: send it as the request body or as a multipart file "
                               "field named 'image'")
        data = await upload.read(limit + 1)
    else:
        data = bytes(body)
    if len(data) > limit:
        raise RequestError(f"upload too large (limit {limit / 2 ** 20:.1f} MB)", 413)
    return data


def build_app(args: dict[str, Any] | None = None, **settings: Any) -> serve.Application:
    """The Serve application (``serve run captioner.serving.ray_serve:build_app key=value ...``).

    Settings: ``model``, ``replicas`` (fixed count), or ``min_replicas`` / ``max_replicas``
    (autoscaling on ongoing requests), ``gpus_per_replica`` (default: 1 when Ray is connected to a
    cluster with GPUs, else 0), ``cpus_per_replica`` (default 1), ``max_batch_size``,
    ``batch_wait_ms``, ``ui`` (mount the Gradio app at ``/``; default true), ``max_upload_mb``,
    ``backend`` (``auto``, ``torch``, ``onnx``; default: the replicas' ``$CAPTIONER_BACKEND``, else ``auto``),
    ``precision`` (``auto``, ``fp32``, ``int8``: the onnx backend's encoder; default: the replicas'
    ``$CAPTIONER_PRECISION``, else ``auto``).
    """
    from captioner.core.backends.choice import requested_backend, requested_precision

    settings = {**(args or {}), **settings}
    unknown = set(settings) - {"model", "replicas", "min_replicas", "max_replicas", "gpus_per_replica",
                               "cpus_per_replica", "max_batch_size", "batch_wait_ms", "ui", "max_upload_mb",
                               "backend", "precision"}
    if unknown:
        raise ValueError(f"unknown setting {sorted(unknown)[0]!r}")
    try:
        backend = requested_backend(str(settings["backend"])) if settings.get("backend") else None
        precision = requested_precision(str(settings["precision"])) if settings.get("precision") else None
    except CaptionerError as error:
        raise ValueError(str(error)) from None
    max_batch = _number(settings, "max_batch_size", MAX_BATCH_SIZE, int, 1)
    wait_s = _number(settings, "batch_wait_ms", BATCH_WAIT_S * 1000, float, 0) / 1000
    cpus = _number(settings, "cpus_per_replica", 1, float, 0)
    gpus = settings.get("gpus_per_replica")
    gpus = _cluster_gpus_default() if gpus in (None, "") else _number(settings, "gpus_per_replica", 0, float, 0)
    if backend == "onnx" and gpus:
        raise ValueError("the onnx backend runs on the CPU: set gpus_per_replica to 0, or use the torch backend")
    if precision == "int8" and gpus:
        raise ValueError("precision int8 runs on the CPU (the onnx backend): set gpus_per_replica to 0")
    ui = str(settings.get("ui", True)).lower() not in ("false", "0", "no")
    upload = int(_number(settings, "max_upload_mb", MAX_IMAGE_BYTES / 2 ** 20, float, 0.001) * 2 ** 20)
    deployment_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {})},
        "max_ongoing_requests": max(64, 4 * max_batch)}
    if settings.get("min_replicas") is not None or settings.get("max_replicas") is not None:
        low = _number(settings, "min_replicas", 1, int, 0)
        high = _number(settings, "max_replicas", max(low, 1), int, 1)
        if low > high:
            raise ValueError(f"min_replicas ({low}) is above max_replicas ({high})")
        deployment_options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                                    "target_ongoing_requests": max_batch}
        deployment_options["num_replicas"] = "auto"
    else:
        deployment_options["num_replicas"] = _number(settings, "replicas", 1, int, 1)
    return CaptionService.options(**deployment_options).bind(
        model=settings.get("model") or None, device="cuda" if gpus else "cpu", max_batch_size=max_batch,
        batch_wait_s=wait_s, threads=int(max(1, cpus)), ui=ui, max_upload_bytes=upload, backend=backend,
        precision=precision)


def _number(settings: dict[str, Any], name: str, default: float, kind: type, low: float) -> Any:
    value = settings.get(name)
    if value is None or value == "":
        return kind(default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of at least {low:g}, got {value!r}") from None
    if number < low or (kind is float and number != number):
        raise ValueError(f"{name} must be a number of at least {low:g}, got {value!r}")
    return number


def _cluster_gpus_default() -> float:
    """1 when Ray is connected to a cluster with GPUs, else 0: never ask for GPUs that are not there."""
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def __getattr__(name: str) -> Any:
    """``app``: the application with default settings, built on first use (``serve run ...:app``)."""
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
