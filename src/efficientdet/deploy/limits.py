"""What the server takes on before it does any work: the request limits and the admission gate.

A ``POST /predict`` passes the :class:`Gate` as soon as its headers have arrived, before its
body is read: it is refused (503 with ``Retry-After``) when ``max_concurrency`` requests are
already in progress or the server is draining. Its image's decoded size is then charged to a
budget of ``max_queue_pixels`` pixels as soon as the image header is known (from the first
bytes of the body where possible, otherwise once the body is in, always before decoding): the
queue in front of the detector is bounded by what it costs in memory, not by a count of
images (256 waiting 50-megapixel images would be 38 GB of RGB). The request's charge is
returned when its answer is sent.

At shut-down :meth:`Gate.drain` turns new requests away, waits for those in progress, and
after the grace period tells the ones still waiting to answer 503 (:meth:`Gate.guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Gate", "Limits", "Refusal", "Ticket"]

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may send and what the server holds at once.

    Attributes:
        max_upload_bytes: request bodies above this are refused (413), from ``Content-Length``
            before reading when the client sends it.
        max_pixels: images whose width x height is above this are refused (413), from the
            image header before decoding.
        max_concurrency: ``/predict`` requests in progress at once (reading, decoding, waiting
            for the detector); more are refused (503) before their body is read. Bodies held
            in memory are at most ``max_concurrency * max_upload_bytes``.
        max_queue_pixels: decoded pixels of the images admitted and not yet answered; an image
            that would pass it is refused (503). At least ``max_pixels``, so that any image the
            server takes can be admitted when it is idle.
        body_timeout_s: the whole body must arrive within this many seconds of the headers,
            or the request gets 408 and its connection is closed (a client sending a byte a
            second holds nothing for longer).
        retry_after_s: the ``Retry-After`` of a 503 refusal.
    """

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_concurrency: int = 64
    max_queue_pixels: int = 200_000_000
    body_timeout_s: float = 30.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrency", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue_pixels < self.max_pixels:
            raise ValueError(
                f"max_queue_pixels ({self.max_queue_pixels}) must be at least max_pixels "
                f"({self.max_pixels}): a largest image could never be admitted"
            )
        if self.body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")


class Refusal(Exception):
    """A request the server answers with an error status and a one-line message.

    Attributes:
        status: the HTTP status (400, 408, 413, 503, ...).
        message: what the client is told.
        retry_after_s: sent as ``Retry-After`` when set (503 refusals).
        reason: a short label for the refusals metric (``"busy"``, ``"draining"``, ...).
    """

    def __init__(
        self, status: int, message: str, *, retry_after_s: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.reason = reason or str(status)


class Ticket:
    """One admitted request: what it holds of the gate until :meth:`Gate.admit` ends."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self.pixels = 0

    def charge_pixels(self, name: str, width: int, height: int) -> None:
        """Charge a ``width x height`` image to the pixel budget (once per request).

        Raises:
            Refusal: 413 above ``max_pixels``; 503 when the budget has no room for it now.
        """
        if self.pixels:
            return
        limits, pixels = self._gate.limits, width * height
        if pixels > limits.max_pixels:
            raise Refusal(
                413, f"{name}: image is {width}x{height} = {pixels} pixels, above the limit of "
                f"{limits.max_pixels}", reason="too_many_pixels",
            )
        held = self._gate.pixels
        if held and held + pixels > limits.max_queue_pixels:
            raise Refusal(
                503, f"{name}: {held} pixels are already waiting for the detector (limit "
                f"{limits.max_queue_pixels}); try again shortly",
                retry_after_s=limits.retry_after_s, reason="queue_full",
            )
        self._gate.pixels += pixels
        self.pixels = pixels


class Gate:
    """Admission of ``/predict`` requests: a concurrency limit, a pixel budget and draining.

    Everything runs on the event loop's thread, so plain counters need no lock.

    Args:
        limits: ``max_concurrency``, ``max_queue_pixels`` and ``retry_after_s`` are read.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.pixels = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()

    @contextlib.contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Hold a place for one request for the ``with`` block.

        Raises:
            Refusal: 503 while draining or with ``max_concurrency`` requests in progress.
        """
        if self.draining:
            raise Refusal(
                503, "the server is shutting down; try another instance",
                retry_after_s=self.limits.retry_after_s, reason="draining",
            )
        if self.in_flight >= self.limits.max_concurrency:
            raise Refusal(
                503, f"{self.in_flight} requests are already in progress (limit "
                f"{self.limits.max_concurrency}); try again shortly",
                retry_after_s=self.limits.retry_after_s, reason="busy",
            )
        ticket = Ticket(self)
        self.in_flight += 1
        self._idle.clear()
        try:
            yield ticket
        finally:
            self.in_flight -= 1
            self.pixels -= ticket.pixels
            if self.in_flight == 0:
                self._idle.set()

    async def guard(self, work: Awaitable[T]) -> T:
        """``await work``, unless the drain's grace period ends first: then ``work`` is
        cancelled and the request is refused (503)."""
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled() and self._closed.is_set():
            raise Refusal(
                503, "the server is shutting down and this request did not finish within its "
                "grace period; try another instance",
                retry_after_s=self.limits.retry_after_s, reason="grace_exceeded",
            )
        return task.result()

    async def drain(self, grace_s: float) -> int:
        """Refuse new requests, wait up to ``grace_s`` for those in progress, then cut the
        rest (each answers 503); returns how many were cut."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return 0
        except asyncio.TimeoutError:  # also TimeoutError from Python 3.11 on
            cut = self.in_flight
            self._closed.set()
            await self._idle.wait()  # each guarded request answers at once
            return cut
