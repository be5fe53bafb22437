"""Running the app under uvicorn with its connection limits, and stopping it gracefully.

On the first SIGTERM (or Ctrl-C) the server drains before it stops: ``/ready`` answers 503
at once (a load balancer takes the instance out), new ``/predict`` requests get 503 with
``Retry-After`` and ``Connection: close``, the requests already admitted finish, and those
still in progress after ``grace_s`` seconds are answered 503. Then uvicorn closes the
listening socket and the connections, the app's shut-down resolves whatever still waits for
the detector, and the process exits with status 0. A second signal stops at once (uvicorn's
own handling: exit status 128 + the signal).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

try:
    import uvicorn
except ImportError as _missing:  # the optional `serve` extra
    raise ImportError(
        f"serving needs uvicorn ({_missing}): pip install 'efficientdet[serve]'"
    ) from _missing

__all__ = ["GracefulServer", "HttpOptions", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP server's own settings (uvicorn's).

    Attributes:
        host: address to listen on.
        port: port to listen on (0: any free one).
        limit_concurrency: connections plus requests in progress at most; beyond it uvicorn
            itself answers 503 (a plain-text body, before the app sees the request).
        timeout_keep_alive_s: an idle keep-alive connection is closed after this.
        max_header_bytes: request line and headers above this get 400 (h11's
            ``max_incomplete_event_size``).
        grace_s: on SIGTERM, how long requests in progress may take to finish.
        log_level: uvicorn's log level.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    limit_concurrency: int = 256
    timeout_keep_alive_s: int = 5
    max_header_bytes: int = 16 * 1024
    grace_s: float = 30.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("limit_concurrency", "timeout_keep_alive_s", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")

    def uvicorn_config(self, app: Any) -> uvicorn.Config:
        """The ``uvicorn.Config`` for ``app``: the h11 protocol (whose header-size limit this
        sets), uvicorn's own access log off (the app writes one)."""
        return uvicorn.Config(
            app, host=self.host, port=self.port, log_level=self.log_level, http="h11",
            limit_concurrency=self.limit_concurrency,
            timeout_keep_alive=self.timeout_keep_alive_s,
            timeout_graceful_shutdown=max(1, round(self.grace_s)),
            h11_max_incomplete_event_size=self.max_header_bytes,
            access_log=False, server_header=False,
        )


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` that runs ``drain()`` on the first SIGTERM or SIGINT before it stops.

    Args:
        config: the uvicorn configuration.
        drain: returns once the app has let its requests finish (or cut them).
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[Any]]) -> None:
        super().__init__(config)
        self.drain = drain
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self.draining = True
        log.info("%s: draining (a second signal stops at once)", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self.begin_drain)

    def begin_drain(self) -> None:
        """Drain, then stop (what the first signal does); call on the server's loop."""
        self.draining = True
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.drain()
        except Exception:
            log.exception("draining failed; stopping")
        finally:
            self.should_exit = True


def serve(app: Any, options: HttpOptions | None = None) -> None:
    """Run ``app`` (from :func:`~efficientdet.deploy.server.create_app`) until a signal stops
    it, draining first (one process, one event loop)."""
    options = options or HttpOptions()

    async def drain() -> None:
        gate = app.state.gate
        if gate is None:
            return
        in_flight = gate.in_flight
        cut = await gate.drain(options.grace_s)
        log.info("drained: %d requests were in progress, %d answered, %d cut after %g s",
                 in_flight, in_flight - cut, cut, options.grace_s)

    GracefulServer(options.uvicorn_config(app), drain).run()
