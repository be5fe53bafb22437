"""Per-request context of the server: a request id, error bodies, the access log, request metrics.

:class:`RequestContext` is the outermost middleware. It gives every request an id (the
client's ``X-Request-ID`` when it is a plain token of at most 64 characters, a new one
otherwise), sends it back as ``X-Request-ID`` and puts it in every error body
(:func:`error_response`), so that a 5xx answer, which carries only a fixed message, can be
matched with the log lines that hold the details. It writes one access-log line per request
(logger ``efficientdet.access``) with the status, the latency, the upload's size, the image's
size and the batch it ran in, and counts the request in the metrics. A response sent before
the request's body was read (a refusal) closes the connection, so that a client cannot keep
it by sending the rest slowly. An exception no handler caught is logged with the id and
answered with a fixed 500.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServerMetrics

__all__ = ["RequestContext", "error_response", "request_id"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("efficientdet.access")

_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
INTERNAL_ERROR = "internal error; the server log has the details under this request id"


def request_id(scope: Scope) -> str:
    """The id :class:`RequestContext` gave this request (``"-"`` outside it)."""
    return str(scope.get("state", {}).get("request_id", "-"))


def error_response(
    scope: Scope, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": message, "request_id": id}`` with ``status``."""
    return JSONResponse(
        {"error": message, "request_id": request_id(scope)}, status_code=status, headers=headers
    )


def _has_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return value.strip() not in (b"", b"0")
        if key == b"transfer-encoding":
            return True
    return False


class RequestContext:
    """ASGI middleware: request id, connection close after early refusals, access log, metrics.

    Args:
        app: the application inside.
        metrics: where each answered request is counted (None: nowhere).
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        state["request_id"] = rid
        started = time.perf_counter()
        body_pending = _has_body(scope)
        status = 0

        async def receive_body() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_pending = False
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                if body_pending:  # answered before the body was read: do not wait for it
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_body, send_with_id)
        except Exception:
            log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
            if status == 0:
                await error_response(scope, 500, INTERNAL_ERROR)(scope, receive, send_with_id)
        finally:
            self._finish(scope, state, status, time.perf_counter() - started)

    def _finish(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        """The access-log line and the metrics of one request (status 499: the client left
        before an answer was sent)."""
        status = status or 499
        client = scope.get("client") or ("-", 0)
        access_log.info(
            "%s %s %s %d %.1f ms client=%s bytes=%s image=%s batch=%s",
            state["request_id"], scope["method"], scope["path"], status, seconds * 1000,
            client[0], state.get("upload_bytes", "-"), state.get("image", "-"),
            state.get("batch_size", "-"),
        )
        if self.metrics is not None:
            self.metrics.observe_request(scope["path"], status, seconds)
