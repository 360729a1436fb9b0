"""The caption service on Ray Serve: replicas behind one HTTP endpoint, requests batched per forward pass.

    serve run captioner.serving.ray_serve:app                      # defaults ($CAPTIONER_MODEL or bundled)
    serve run captioner.serving.ray_serve:build_app max_batch_size=16 max_replicas=4
    python -m captioner serve --replicas 2                           # the same from the command line

Each replica loads the model once. ``POST /v1/caption`` takes one image (the raw request body, or a
multipart field named ``image`` or ``file``) with decoding settings as query parameters
(``beam_size``, ``num_candidates``, ``max_length``, ``length_penalty``, ``top_classes``,
``no_repeat_ngram``, ``when_unsure``) and answers with the library's result schema as JSON. Each request decodes and
checks its own image (a bad one gets HTTP 400 with the loader's message and costs no one else
anything); ``@serve.batch`` then gathers the prepared images of concurrent requests and
``core.batching`` runs them as one forward pass per group of equal settings
(``Captioner.pipeline.caption_batch``). ``GET /healthz``
reports the model and how many forward passes served how many requests. The Gradio app
(``captioner.web.app``) is mounted at ``/`` behind the same request guards as ``python app.py``.

What a request may cost (``ServeLimits``, see ``serve_limits``): a declared body size within the
upload cap and the replica's body budget, a few requests in flight per client, a time limit; model
work that runs past its limit fails the replica's health check, and Ray Serve replaces the replica.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: no calls home
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import asyncio  # noqa: E402
import gc  # noqa: E402
import threading  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402  (module level: FastAPI resolves annotations here)
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402

from captioner.core.batching import PreparedImage, run_by_options  # noqa: E402
from captioner.core.errors import CaptionerError, ImageError  # noqa: E402
from captioner.core.images.decode import MAX_IMAGE_BYTES  # noqa: E402
from captioner.core.images.memory import release_free_memory  # noqa: E402
from captioner.core.options import DecodeOptions  # noqa: E402
from captioner.serving.serve_limits import (  # noqa: E402
    BodyBudget,
    ClientShares,
    RequestError,
    Watchdog,
    body_length,
    read_image,
)

MAX_BATCH_SIZE = 8  # prepared images per forward pass
BATCH_WAIT_S = 0.01  # how long the first request of a batch waits for company
OPTION_NAMES = ("beam_size", "num_candidates", "max_length", "length_penalty", "top_classes", "no_repeat_ngram",
                "when_unsure")
MAX_ONGOING_REQUESTS = 64  # per replica, the mounted page's requests included
MAX_QUEUED_REQUESTS = 256  # waiting for a replica, beyond which Serve answers 503 at once
PROXY_KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
PROXY_REQUEST_TIMEOUT_S = 900.0  # the proxy's end-to-end limit (long enough for a batch job's event stream)
# glibc settings for every Ray process of the service: few arenas, and blocks of 64 KB or more (request
# body chunks, pixel buffers) mapped on their own and unmapped when freed, so that a burst of large
# requests leaves no lasting growth (see docs/ray.md for the figures).
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost a replica, and when a replica counts as stuck."""

    request_timeout_s: float = 60.0  # one /v1/caption request, upload included (504 after)
    requests_per_client: int = 16  # /v1/caption requests of one client address in flight (429 beyond)
    body_budget_bytes: int = 256 * 1024 * 1024  # declared bodies a replica holds at once (503 beyond)
    stuck_after_s: float = 120.0  # model work running longer fails the health check
    health_check_period_s: float = 10.0


def decode_options(query: dict[str, str]) -> DecodeOptions:
    """Decoding settings from query parameters; numbers are parsed, the library checks the ranges."""
    unknown = sorted(set(query) - set(OPTION_NAMES))
    if unknown:
        raise RequestError(f"unknown query parameter {unknown[0][:40]!r}; the decoding settings are "
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


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class CaptionService:
    """One replica: the model loaded once, the REST routes, and the Gradio UI."""

    def __init__(self, model: str | None = None, device: str = "cpu", max_batch_size: int = MAX_BATCH_SIZE,
                 batch_wait_s: float = BATCH_WAIT_S, threads: int = 1, ui: bool = True,
                 max_upload_bytes: int = MAX_IMAGE_BYTES, backend: str | None = None, precision: str | None = None,
                 limits: ServeLimits = ServeLimits()):
        import torch

        from captioner.core.inference import load_captioner

        torch.set_num_threads(max(1, threads))
        self.model, self.backend, self.ui, self.max_upload_bytes = model, backend, ui, max_upload_bytes
        self.precision, self.limits = precision, limits
        self.captioner = load_captioner(model, device, backend, precision)
        self.max_batch_size = max_batch_size
        self.caption_batch.set_max_batch_size(max_batch_size)
        self.caption_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.bodies = BodyBudget(limits.body_budget_bytes)
        self.clients = ClientShares(limits.requests_per_client)
        self.watchdog = Watchdog(limits.stuck_after_s)
        self.in_flight = 0
        self.forward_passes = self.requests = self.largest_batch = 0
        self.recent_batches: deque[int] = deque(maxlen=100)
        self._stats_lock = threading.Lock()

    def __serve_build_asgi_app__(self):
        return build_http_app(self)

    def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; raising marks the replica unhealthy and
        Serve replaces it."""
        self.watchdog.check()

    async def caption_request(self, request: Request) -> dict[str, Any]:
        """A ``/v1/caption`` request, within its client's share and the replica's time limit."""
        options = decode_options(dict(request.query_params)).resolved(self.captioner.config.max_length)
        self.in_flight += 1
        try:
            with self.clients.admit(request):
                return await asyncio.wait_for(self._caption(request, options), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the request took longer than {self.limits.request_timeout_s:g} s; try again "
                               "later", 504) from None
        finally:
            self.in_flight -= 1
            if not self.in_flight:  # hand back what large bodies and decodes freed
                await asyncio.get_running_loop().run_in_executor(None, _release_memory)

    async def _caption(self, request: Request, options: DecodeOptions) -> dict[str, Any]:
        with self.bodies.reserve(body_length(request, self.max_upload_bytes)):
            data = await read_image(request, self.max_upload_bytes)
            pixels = await self._in_thread(self.captioner.pipeline.prepare, data)  # ImageError for a bad image
            del data
        result = await self.caption_batch(PreparedImage(pixels, options))
        if isinstance(result, Exception):
            raise result
        return result.to_dict()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def caption_batch(self, requests: list[PreparedImage]) -> list[Any]:
        return await self._in_thread(run_by_options, requests, self._forward)

    async def _in_thread(self, work: Callable, *args: Any) -> Any:
        """``work(*args)`` in the replica's thread pool, watched by the health check."""
        def watched() -> Any:
            with self.watchdog.track():
                return work(*args)

        return await asyncio.get_running_loop().run_in_executor(None, watched)

    def _forward(self, pixels: Any, options: DecodeOptions, group: list[PreparedImage]) -> list[Any]:
        results = self.captioner.pipeline.caption_batch(pixels, options)
        with self._stats_lock:
            self.forward_passes += 1
            self.requests += len(group)
            self.largest_batch = max(self.largest_batch, len(group))
            self.recent_batches.append(len(group))
        return results

    def health(self) -> dict[str, Any]:
        with self._stats_lock:
            return {"status": "ok", "model": self.captioner.loaded.source, "device": str(self.captioner.device),
                    "backend": self.captioner.backend, "precision": self.captioner.precision,
                    "max_batch_size": self.max_batch_size, "replica": _replica_id(),
                    "forward_passes": self.forward_passes, "requests": self.requests,
                    "largest_batch": self.largest_batch, "recent_batches": list(self.recent_batches)}


def _release_memory() -> None:
    """Collect the reference cycles of finished requests (a refused request's traceback keeps its
    body alive until then), then hand freed memory back to the system."""
    gc.collect()
    release_free_memory()


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests of the routes alone)
        return None


def build_http_app(service: CaptionService) -> FastAPI:
    """The replica's FastAPI app: the REST routes, then (with ``service.ui``) the Gradio app at ``/``."""
    http = FastAPI(title="captioner", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)

    def refuse(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"}
                            if status in (411, 413, 503) else None)  # an unread body: do not keep the connection

    @http.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """The model, and how many forward passes served how many requests."""
        return service.health()

    @http.post("/v1/caption")
    async def caption(request: Request):
        """Caption one image: the request body (with Content-Length), or a multipart field ``image`` /
        ``file``. Decoding settings are query parameters. Answers with the library's result schema."""
        try:
            return await service.caption_request(request)
        except RequestError as error:
            return refuse(str(error), error.status)
        except ImageError as error:
            return refuse(str(error), 400)
        except ValueError as error:  # a decoding setting out of range (the message names it)
            return refuse(str(error), 422)

    if service.ui:
        from captioner.web import app as web_app

        demo = web_app.build_demo(service.model, batch_size=service.max_batch_size, backend=service.backend,
                                  precision=service.precision)
        mount_page(http, demo, web_app.launch_options())
    return http


def mount_page(http: FastAPI, demo: Any, options: dict[str, Any], path: str = "/") -> None:
    """Mount the Gradio app ``demo`` on ``http`` with the request limits and guards ``options`` (the
    app's ``launch_options()``) give ``python app.py``. Gradio checks the paths of file inputs
    itself only in an app it launched, so the mounted app is marked as launched; the guards in
    ``app_kwargs`` refuse server paths before Gradio sees them."""
    import gradio as gr

    gr.mount_gradio_app(http, demo, path=path, max_file_size=options["max_file_size"], theme=options["theme"],
                        css=options["css"], app_kwargs=options.get("app_kwargs"))
    demo.has_launched = True


def use_returning_allocator() -> None:
    """Put ``ALLOCATOR_ENV`` into this process's environment (settings already there win), so that a
    local Ray cluster started afterwards hands it to all its processes, Serve's proxy included."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)


def http_options(host: str, port: int) -> dict[str, Any]:
    """Serve's proxy settings for ``serve.start``: address, idle keep-alive limit, end-to-end limit.
    (Ray's proxy offers no header timeout or connection cap; see docs/ray.md.)"""
    return {"host": host, "port": port, "keep_alive_timeout_s": PROXY_KEEP_ALIVE_S,
            "request_timeout_s": PROXY_REQUEST_TIMEOUT_S}


SETTINGS = ("model", "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica",
            "max_batch_size", "batch_wait_ms", "ui", "max_upload_mb", "backend", "precision", "request_timeout_s",
            "requests_per_client", "body_budget_mb", "stuck_after_s", "health_check_period_s")


def build_app(args: dict[str, Any] | None = None, **settings: Any) -> serve.Application:
    """The Serve application (``serve run captioner.serving.ray_serve:build_app key=value ...``).

    Settings: ``model``, ``replicas`` (fixed count), or ``min_replicas`` / ``max_replicas``
    (autoscaling on ongoing requests), ``gpus_per_replica`` (default: 1 when Ray is connected to a
    cluster with GPUs, else 0), ``cpus_per_replica`` (default 1), ``max_batch_size``,
    ``batch_wait_ms``, ``ui`` (mount the Gradio app at ``/``; default true), ``max_upload_mb``,
    ``backend`` (``auto``, ``torch``, ``onnx``; default: the replicas' ``$CAPTIONER_BACKEND``, else
    ``auto``), ``precision`` (``auto``, ``fp32``, ``int8``: the onnx backend's encoder; default: the
    replicas' ``$CAPTIONER_PRECISION``, else ``auto``), and the limits of ``ServeLimits``:
    ``request_timeout_s``, ``requests_per_client``, ``body_budget_mb``, ``stuck_after_s``,
    ``health_check_period_s``.
    """
    from captioner.core.backends.choice import requested_backend, requested_precision

    settings = {**(args or {}), **settings}
    unknown = set(settings) - set(SETTINGS)
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
    limits = _limits(settings)
    if limits.body_budget_bytes < upload:
        raise ValueError(f"body_budget_mb ({limits.body_budget_bytes / 2 ** 20:g}) must hold at least one upload "
                         f"(max_upload_mb {upload / 2 ** 20:g})")
    deployment_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {}),
                              "runtime_env": {"env_vars": dict(ALLOCATOR_ENV)}},
        "max_ongoing_requests": max(MAX_ONGOING_REQUESTS, 4 * max_batch),
        "max_queued_requests": MAX_QUEUED_REQUESTS,
        "health_check_period_s": limits.health_check_period_s,
        "health_check_timeout_s": max(limits.health_check_period_s, 5.0)}
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
        precision=precision, limits=limits)


def _limits(settings: dict[str, Any]) -> ServeLimits:
    default = asdict(ServeLimits())
    budget_mb = _number(settings, "body_budget_mb", default["body_budget_bytes"] / 2 ** 20, float, 1)
    return ServeLimits(
        request_timeout_s=_number(settings, "request_timeout_s", default["request_timeout_s"], float, 0.1),
        requests_per_client=_number(settings, "requests_per_client", default["requests_per_client"], int, 1),
        body_budget_bytes=int(budget_mb * 2 ** 20),
        stuck_after_s=_number(settings, "stuck_after_s", default["stuck_after_s"], float, 0.1),
        health_check_period_s=_number(settings, "health_check_period_s", default["health_check_period_s"], float, 0.1))


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
