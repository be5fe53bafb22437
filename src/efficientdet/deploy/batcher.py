"""Request batching for one detector: concurrent requests' images go through one model call.

An :class:`asyncio.Queue` feeds one worker task, which takes the first image, waits up to
``batch_wait_ms`` for more (at most ``max_batch``) and runs the detector in a thread, so the
event loop goes on accepting requests while the model works. The queue itself is not bounded
here: the server's :class:`~efficientdet.deploy.limits.Gate` admits images by their pixels
before they are decoded, which bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

__all__ = ["BatchStats", "Batcher", "DetectorFailed", "ShuttingDown"]

log = logging.getLogger(__name__)

BatchObserver = Callable[[int, float], None]  # (images in the call, seconds it took)


@dataclass
class BatchStats:
    """What the worker has done: detector calls, images, and calls per batch size."""

    calls: int = 0
    images: int = 0
    errors: int = 0
    model_seconds: float = 0.0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_calls": self.calls,
            "images": self.images,
            "errors": self.errors,
            "model_seconds": round(self.model_seconds, 3),
            "mean_batch": round(self.images / self.calls, 3) if self.calls else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class DetectorFailed(RuntimeError):
    """The detector raised on the batch this image was in (the log has the details)."""


class ShuttingDown(RuntimeError):
    """The batcher stopped before this image's batch ran."""


@dataclass
class _Item:
    image: Image.Image
    future: asyncio.Future[dict[str, Any]]
    request_id: str


class Batcher:
    """Collects images from concurrent requests into batches for one detector.

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]``, per image
            ``{"boxes": Tensor[K, 4] xyxy in its pixels, "scores": Tensor[K],
            "labels": Tensor[K]}`` (what :func:`~efficientdet.deploy.backends.build_predictor`
            gives). Called from a worker thread, one call at a time.
        max_batch: images per call, at most.
        batch_wait_ms: after the first image of a batch, wait this long for more.
        on_batch: called after each successful detector call with ``(images, seconds)``
            (the server's metrics).
    """

    def __init__(
        self,
        predict_fn: Callable[[list[Image.Image]], Sequence[Any]],
        *,
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.predict_fn = predict_fn
        self.max_batch = max_batch
        self.wait_s = batch_wait_ms / 1000.0
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._running: list[_Item] = []
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Images waiting for a detector call (not counting the batch being run)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; every request still waiting, queued or in the running batch,
        gets :class:`ShuttingDown`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        waiting = list(self._running)
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._running = []
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server is shutting down"))

    async def predict(self, image: Image.Image, request_id: str = "-") -> dict[str, Any]:
        """``{"prediction": the detector's dict for image, "batch_size": images in its call}``.

        Raises:
            DetectorFailed: the detector raised on this image's batch.
            ShuttingDown: :meth:`stop` ran before the batch did.
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(image, future, request_id))
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
            # asyncio.TimeoutError is not the builtin TimeoutError before Python 3.11.
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        # A request that timed out or was cut while waiting no longer needs its result.
        return [item for item in batch if not item.future.done()]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                self._running = batch
                await self._run_batch(batch)
                self._running = []

    async def _run_batch(self, batch: list[_Item]) -> None:
        images = [item.image for item in batch]
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.predict_fn, images)
            if len(results) != len(images):
                raise RuntimeError(
                    f"the detector returned {len(results)} results for {len(images)} images"
                )
        except Exception:  # every waiting request hears of it; the worker goes on
            ids = ", ".join(item.request_id for item in batch)
            log.exception("detector call on %d images failed (requests %s)", len(images), ids)
            self.stats.errors += len(images)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(DetectorFailed("the detector failed"))
            return
        seconds = time.perf_counter() - started
        self.stats.calls += 1
        self.stats.images += len(images)
        self.stats.model_seconds += seconds
        self.stats.batch_sizes[len(images)] += 1
        if self.on_batch is not None:
            self.on_batch(len(images), seconds)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result({"prediction": result, "batch_size": len(images)})
