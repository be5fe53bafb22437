"""An HTTP API for a detector: the FastAPI app, its routes and how its parts fit together.

``POST /predict`` takes one image, as a multipart upload (any file field; the browser form
uses ``file``) or as the raw request body, and answers ``{"file_name", "width", "height",
"detections": [{"box": [x1, y1, x2, y2], "score", "label", "category_id", "category"}],
"batch_size"}`` with boxes in the uploaded image's pixels. Requests that arrive together
run as one batch (:class:`~efficientdet.deploy.batcher.Batcher`).

``GET /health``: the process answers. ``GET /ready``: the model is loaded, has run once and
the server is not draining (503 otherwise). ``GET /stats``: model calls and images so far.
``GET /metrics``: Prometheus metrics (:mod:`~efficientdet.deploy.metrics`). ``GET /``: the
web UI.

The parts, each in its module: the limits and the admission gate (:mod:`.limits`), reading
an upload within them (:mod:`.upload`), request ids, error bodies and the access log
(:mod:`.context`), the Host check, API key and CORS (:mod:`.security`), draining on SIGTERM
under uvicorn (:mod:`.lifecycle`). Every error answers ``{"error": message, "request_id"}``;
a 5xx carries a fixed message, the details go to the log under the same id.

FastAPI, uvicorn and prometheus-client are the ``serve`` extra: ``pip install
'efficientdet[serve]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.middleware.cors import CORSMiddleware
except ImportError as _missing:  # the optional `serve` extra
    raise ImportError(
        f"serving needs FastAPI and uvicorn ({_missing}): pip install 'efficientdet[serve]'"
    ) from _missing

from ..detection.transform import ImageReadError, ImageTooLargeError, load_image_bytes
from ..inference.predict import detection_records
from .backends import Predictor
from .batcher import Batcher, BatchStats, DetectorFailed, ShuttingDown
from .context import RequestContext, error_response
from .limits import Gate, Limits, Refusal, Ticket
from .metrics import CONTENT_TYPE, ServerMetrics
from .security import ApiKeyCheck, HostCheck, Security
from .upload import read_upload

__all__ = ["BatchRunner", "ServerConfig", "create_app"]

WEB_UI = Path(__file__).with_name("webui.html")


@dataclass(frozen=True)
class ServerConfig:
    """How the server batches, what it accepts and who may call it.

    Attributes:
        max_batch: images per detector call, at most.
        batch_wait_ms: how long the worker waits for more images after the first of a batch.
        request_timeout_s: from the upload being in to the answer; beyond it the request
            gets 504.
        warmup: run the detector once on a small blank image before ``/ready`` says yes.
        limits: sizes, concurrency, the pixel queue and the body deadline (:class:`Limits`).
        security: API key, allowed hosts, CORS (:class:`Security`).
    """

    max_batch: int = 8
    batch_wait_ms: float = 5.0
    request_timeout_s: float = 30.0
    warmup: bool = True
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


class BatchRunner(Protocol):
    """What the app needs of its batcher (:class:`Batcher`, or Ray Serve's in
    :mod:`efficientdet.deploy.ray_serve`)."""

    stats: BatchStats

    @property
    def queued(self) -> int: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def predict(self, image: Image.Image, request_id: str = "-") -> dict[str, Any]: ...


BatcherFactory = Callable[[Predictor, ServerConfig, ServerMetrics], BatchRunner]


def local_batcher(predictor: Predictor, config: ServerConfig, metrics: ServerMetrics) -> Batcher:
    """The in-process :class:`Batcher` (the default of :func:`create_app`)."""
    return Batcher(
        predictor.predict_fn, max_batch=config.max_batch, batch_wait_ms=config.batch_wait_ms,
        on_batch=metrics.observe_batch,
    )


def create_app(
    predictor: Predictor,
    config: ServerConfig | None = None,
    *,
    model_name: str = "detector",
    batcher: BatcherFactory = local_batcher,
) -> FastAPI:
    """The FastAPI application serving ``predictor``.

    Args:
        predictor: from :func:`~efficientdet.deploy.backends.build_predictor` (any backend);
            its class names and category ids label the detections.
        config: batching, limits and security (:class:`ServerConfig` defaults when None).
        model_name: shown by ``/ready``.
        batcher: makes the batcher at start-up (default: :func:`local_batcher`).

    Returns:
        A ``fastapi.FastAPI``; ``app.state.batcher`` and ``app.state.gate`` (the
        :class:`~efficientdet.deploy.limits.Gate`) are made at start-up (None before),
        ``app.state.metrics`` is its :class:`~efficientdet.deploy.metrics.ServerMetrics`.
    """
    config = config or ServerConfig()
    metrics = ServerMetrics(config.max_batch)
    state: dict[str, Any] = {"ready": False}
    app = FastAPI(
        title="efficientdet", lifespan=_lifespan(predictor, config, metrics, state, batcher),
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.batcher = None
    app.state.gate = None
    app.state.metrics = metrics
    _add_error_handlers(app, metrics)
    _add_status_routes(app, predictor, config, state, model_name)

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        gate: Gate | None = app.state.gate
        runner: BatchRunner | None = app.state.batcher
        if gate is None or runner is None or not state["ready"]:
            raise Refusal(503, "the model is not loaded yet; see /ready",
                          retry_after_s=config.limits.retry_after_s, reason="not_ready")
        with gate.admit() as ticket:
            return await gate.guard(_answer(request, ticket, runner, predictor, config))

    _add_middleware(app, config.security, metrics)
    return app


def _add_middleware(app: FastAPI, security: Security, metrics: ServerMetrics) -> None:
    """From the outside in: request context (id, access log, metrics), Host check, CORS
    (when origins are given), API key (when one is set)."""
    # add_middleware puts each one outside those added before it.
    if security.api_key is not None:
        app.add_middleware(ApiKeyCheck, security=security)
    if security.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(security.cors_origins),
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "X-API-Key",
                                                          "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(HostCheck, allowed_hosts=security.allowed_hosts)
    app.add_middleware(RequestContext, metrics=metrics)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Refusals and HTTP errors answer ``{"error", "request_id"}``."""

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        metrics.refusals.labels(reason=exc.reason).inc()
        headers = {"retry-after": str(exc.retry_after_s)} if exc.retry_after_s else None
        return error_response(request.scope, exc.status, exc.message, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request.scope, exc.status_code, str(exc.detail), headers)


def _lifespan(
    predictor: Predictor, config: ServerConfig, metrics: ServerMetrics, state: dict[str, Any],
    make_batcher: BatcherFactory,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's start-up and shut-down: make the batcher and the gate (as ``app.state``),
    run the model once when ``config.warmup``, start the batcher and mark the app ready;
    at the end not ready, new requests refused, and every waiting request answered."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = make_batcher(predictor, config, metrics)
        gate = Gate(config.limits)
        metrics.watch(lambda: gate.in_flight, lambda: runner.queued, lambda: gate.pixels)
        app.state.batcher, app.state.gate = runner, gate
        if config.warmup:
            await asyncio.to_thread(predictor.predict_fn, [Image.new("RGB", (64, 64))])
        runner.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            gate.draining = True
            await runner.stop()

    return lifespan


def _add_status_routes(
    app: FastAPI,
    predictor: Predictor,
    config: ServerConfig,
    state: dict[str, Any],
    model_name: str,
) -> None:
    """``GET /`` (the web UI), ``/health``, ``/ready``, ``/stats`` and ``/metrics``."""

    @app.get("/", response_class=HTMLResponse)
    async def web_ui() -> HTMLResponse:
        return HTMLResponse(WEB_UI.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        draining = app.state.gate is not None and app.state.gate.draining
        is_ready = state["ready"] and not draining
        body = {
            "ready": is_ready, "draining": draining, "model": model_name,
            "classes": predictor.num_classes, "max_batch": config.max_batch,
        }
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        runner = app.state.batcher
        return runner.stats.as_dict() if runner is not None else BatchStats().as_dict()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE)


async def _answer(
    request: Request, ticket: Ticket, runner: BatchRunner, predictor: Predictor, config: ServerConfig
) -> dict[str, Any]:
    """``POST /predict``'s answer: read the upload within the limits, decode it, wait for its
    batch and label the detections; what goes wrong becomes a :class:`Refusal`."""
    info = request.state
    upload = await read_upload(request, config.limits, ticket)
    info.upload_bytes = len(upload.data)
    try:
        image = await asyncio.to_thread(
            load_image_bytes, upload.data, upload.name, max_pixels=config.limits.max_pixels
        )
    except ImageTooLargeError as err:
        raise Refusal(413, str(err), reason="too_many_pixels") from err
    except ImageReadError as err:
        raise Refusal(400, str(err), reason="not_an_image") from err
    info.image = f"{image.width}x{image.height}"
    try:
        answer = await asyncio.wait_for(
            runner.predict(image, info.request_id), config.request_timeout_s
        )
    except asyncio.TimeoutError:  # the builtin TimeoutError too, from Python 3.11 on
        raise Refusal(
            504, f"{upload.name}: no result within the limit of {config.request_timeout_s:g} s "
            "(the server is busy)", reason="timeout",
        ) from None
    except DetectorFailed:
        raise Refusal(500, "the detector failed; the server log has the details under this "
                      "request id", reason="detector_failed") from None
    except ShuttingDown:
        raise Refusal(503, "the server is shutting down; try another instance",
                      retry_after_s=config.limits.retry_after_s, reason="draining") from None
    info.batch_size = answer["batch_size"]
    detections = detection_records(
        answer["prediction"], class_names=predictor.class_names,
        label_to_category_id=predictor.label_to_category_id,
    )
    return {
        "file_name": upload.name, "width": image.width, "height": image.height,
        "detections": detections, "batch_size": answer["batch_size"],
    }
