"""An HTTP API for a detector: FastAPI app, request batching, limits, a one-page web UI.

``POST /predict`` takes one image, as a multipart upload (any file field; the browser form
uses ``file``) or as the raw request body, and answers ``{"file_name", "width", "height",
"detections": [{"box": [x1, y1, x2, y2], "score", "label", "category_id", "category"}],
"batch_size"}`` with boxes in the uploaded image's pixels. Requests that arrive together
are run as one batch: an :class:`asyncio.Queue` feeds one worker, which waits up to
``batch_wait_ms`` for more images (at most ``max_batch``) and runs the detector in a thread,
so the event loop keeps accepting requests while the model works.

``GET /health``: the process answers. ``GET /ready``: the model is loaded and has run once
(503 before). ``GET /stats``: model calls and images so far. ``GET /``: the web UI.

Limits, each refused with a message that names the upload and the problem: the body size
(413), the pixel count read from the image header before decoding (413), the time a request
may wait for its result (504), the queue length (503); what is not an image gets 400.

FastAPI and uvicorn are the ``serve`` extra: ``pip install 'efficientdet[serve]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser
except ImportError as _missing:  # the optional `serve` extra
    raise ImportError(
        f"serving needs FastAPI and uvicorn ({_missing}): pip install 'efficientdet[serve]'"
    ) from _missing

from ..detection.transform import ImageReadError, ImageTooLargeError, load_image_bytes
from ..inference.predict import detection_records
from .backends import Predictor

__all__ = ["BatchStats", "Batcher", "ServerConfig", "create_app", "serve"]

log = logging.getLogger(__name__)

WEB_UI = Path(__file__).with_name("webui.html")


@dataclass(frozen=True)
class ServerConfig:
    """How the server batches and what it accepts.

    Attributes:
        max_batch: images per detector call, at most.
        batch_wait_ms: how long the worker waits for more images after the first of a batch.
        max_upload_bytes: request bodies above this are refused (413).
        max_pixels: images whose width x height is above this are refused (413).
        request_timeout_s: a request not answered within this gets 504.
        max_queue: images waiting at most; more are refused (503) until the queue drains.
        warmup: run the detector once on a small blank image before ``/ready`` says yes.
    """

    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    request_timeout_s: float = 30.0
    max_queue: int = 256
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        for name in ("max_upload_bytes", "max_pixels", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


@dataclass
class BatchStats:
    """What the worker has done: detector calls, images, and calls per batch size."""

    calls: int = 0
    images: int = 0
    errors: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_calls": self.calls,
            "images": self.images,
            "errors": self.errors,
            "mean_batch": round(self.images / self.calls, 3) if self.calls else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class QueueFull(RuntimeError):
    """More images are waiting than the server takes."""


@dataclass
class _Item:
    image: Image.Image
    future: asyncio.Future[dict[str, Any]]


class Batcher:
    """Collects images from concurrent requests into batches for one detector.

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]``, per image
            ``{"boxes": Tensor[K, 4] xyxy in its pixels, "scores": Tensor[K],
            "labels": Tensor[K]}`` (what :func:`~efficientdet.deploy.onnx_backend.build_predictor`
            gives). Called from a worker thread, one call at a time.
        max_batch: images per call, at most.
        batch_wait_ms: after the first image of a batch, wait this long for more.
        max_queue: images waiting at most (:class:`QueueFull` beyond).
    """

    def __init__(
        self,
        predict_fn: Callable[[list[Image.Image]], Sequence[Any]],
        *,
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
        max_queue: int = 256,
    ) -> None:
        self.predict_fn = predict_fn
        self.max_batch = max_batch
        self.wait_s = batch_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get an error."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))

    async def predict(self, image: Image.Image) -> dict[str, Any]:
        """The detector's result for one image, computed in a batch with others.

        Raises:
            QueueFull: too many images are waiting.
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(image, future))
        except asyncio.QueueFull:
            raise QueueFull(
                f"{self._queue.maxsize} images are already waiting; try again shortly"
            ) from None
        return await future

    async def _next_batch(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    batch.append(self._queue.get_nowait())  # what is already there
                else:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        # A request that timed out while waiting no longer needs its result.
        return [item for item in batch if not item.future.done()]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            images = [item.image for item in batch]
            try:
                results = await asyncio.to_thread(self.predict_fn, images)
                if len(results) != len(images):
                    raise RuntimeError(
                        f"the detector returned {len(results)} results for {len(images)} images"
                    )
            except Exception as err:  # every waiting request hears of it; the worker goes on
                log.exception("detector call on %d images failed", len(images))
                self.stats.errors += len(images)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError(f"the detector failed: {err}"))
                continue
            self.stats.calls += 1
            self.stats.images += len(images)
            self.stats.batch_sizes[len(images)] += 1
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result({"prediction": result, "batch_size": len(images)})


async def _read_body(request: Request, limit: int, name: str) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"{name}: upload of {int(declared)} bytes is above the limit of {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"{name}: upload is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request, config: ServerConfig) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the image in a multipart form or the raw body."""
    content_type = request.headers.get("content-type", "")
    body = await _read_body(request, config.max_upload_bytes, "request")
    if not content_type.startswith("multipart/form-data"):
        name = request.query_params.get("name") or "request body"
        return name, body

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=4, max_fields=16,
        max_part_size=config.max_upload_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"request: malformed multipart form ({err.message})") from err
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(
                400, "request: the multipart form has no file field (send the image as 'file')"
            )
        upload = files[0]
        return upload.filename or "upload", await upload.read()
    finally:
        await form.close()


def create_app(
    predictor: Predictor,
    config: ServerConfig | None = None,
    *,
    model_name: str = "detector",
) -> FastAPI:
    """The FastAPI application serving ``predictor``.

    Args:
        predictor: from :func:`~efficientdet.deploy.onnx_backend.build_predictor` (PyTorch or
            ONNX Runtime); its class names and category ids label the detections.
        config: batching and limits (:class:`ServerConfig` defaults when None).
        model_name: shown by ``/ready`` and the web UI.

    Returns:
        A ``fastapi.FastAPI``; ``app.state.batcher`` is its :class:`Batcher` (created at
        start-up, None before).
    """
    config = config or ServerConfig()
    state: dict[str, Any] = {"ready": False}
    app = FastAPI(title="efficientdet", lifespan=_lifespan(predictor, config, state))
    app.state.batcher = None

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    _add_status_routes(app, predictor, config, state, model_name)

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        batcher: Batcher | None = app.state.batcher
        if batcher is None or not state["ready"]:
            raise HTTPException(503, "the model is not loaded yet; see /ready")
        return await _predict_upload(request, batcher, predictor, config)

    return app


def _lifespan(
    predictor: Predictor, config: ServerConfig, state: dict[str, Any]
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's start-up and shut-down: make the :class:`Batcher` (as ``app.state.batcher``),
    run the model once when ``config.warmup``, start the worker and mark the app ready;
    not ready and the worker stopped at the end."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(
            predictor.predict_fn, max_batch=config.max_batch,
            batch_wait_ms=config.batch_wait_ms, max_queue=config.max_queue,
        )
        app.state.batcher = batcher
        if config.warmup:
            await asyncio.to_thread(predictor.predict_fn, [Image.new("RGB", (64, 64))])
        batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()

    return lifespan


def _add_status_routes(
    app: FastAPI,
    predictor: Predictor,
    config: ServerConfig,
    state: dict[str, Any],
    model_name: str,
) -> None:
    """``GET /`` (the web UI), ``/health``, ``/ready`` and ``/stats``."""

    @app.get("/", response_class=HTMLResponse)
    async def web_ui() -> HTMLResponse:
        return HTMLResponse(WEB_UI.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = {
            "ready": state["ready"], "model": model_name,
            "classes": predictor.num_classes, "max_batch": config.max_batch,
        }
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        batcher = app.state.batcher
        return batcher.stats.as_dict() if batcher is not None else BatchStats().as_dict()


async def _predict_upload(
    request: Request, batcher: Batcher, predictor: Predictor, config: ServerConfig
) -> dict[str, Any]:
    """``POST /predict``'s answer: read and decode the upload within the limits, wait for
    its batch, and label the detections; limits and failures become HTTP errors."""
    started = time.monotonic()
    name, data = await _upload(request, config)
    try:
        image = await asyncio.to_thread(
            load_image_bytes, data, name, max_pixels=config.max_pixels
        )
    except ImageTooLargeError as err:
        raise HTTPException(413, str(err)) from err
    except ImageReadError as err:
        raise HTTPException(400, str(err)) from err
    remaining = config.request_timeout_s - (time.monotonic() - started)
    try:
        answer = await asyncio.wait_for(batcher.predict(image), max(remaining, 0.001))
    except TimeoutError:
        raise HTTPException(
            504, f"{name}: no result within the limit of {config.request_timeout_s:g} s "
            "(the server is busy)",
        ) from None
    except QueueFull as err:
        raise HTTPException(503, f"{name}: {err}") from err
    except RuntimeError as err:
        raise HTTPException(500, f"{name}: {err}") from err
    detections = detection_records(
        answer["prediction"], class_names=predictor.class_names,
        label_to_category_id=predictor.label_to_category_id,
    )
    return {
        "file_name": name, "width": image.width, "height": image.height,
        "detections": detections, "batch_size": answer["batch_size"],
    }


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (one process, one event loop)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
