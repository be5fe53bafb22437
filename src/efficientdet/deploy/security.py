"""Who may talk to the server: the Host check, the API key, CORS, and when a key is required.

- **Host**: a request whose ``Host`` header is not in the allowed list gets 400 (a web page
  that rebinds its own DNS name to 127.0.0.1 cannot reach the server under that name). The
  list holds the loopback names by default; entries are names or addresses, ``*.example.com``
  for a domain's subdomains, or ``*`` for any.
- **API key**: when one is set, every path except ``/``, ``/health`` and ``/ready`` (and
  ``/metrics`` with ``metrics_public``) needs it, as ``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY``, compared in constant time; otherwise 401. The web UI page itself is
  open (it holds no data) and sends the key that is typed into it.
- **CORS**: off (browsers refuse other origins' scripts) unless origins are listed.
- **Exposure**: :func:`check_exposure` refuses to listen beyond loopback without a key,
  unless told so explicitly.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from .context import error_response

__all__ = [
    "ENV_API_KEY",
    "LOOPBACK_HOSTS",
    "ApiKeyCheck",
    "HostCheck",
    "Security",
    "check_exposure",
    "host_allowed",
    "is_loopback",
    "key_matches",
]

ENV_API_KEY = "EFFICIENTDET_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = frozenset({"/", "/health", "/ready"})


@dataclass(frozen=True)
class Security:
    """Access rules of one app.

    Attributes:
        api_key: the key clients must send (None: no key asked for).
        allowed_hosts: ``Host`` header names served (see the module's notes).
        cors_origins: origins whose pages may call the API from a browser (empty: none).
        metrics_public: ``/metrics`` answers without the key (for a scraper that sends none).
    """

    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: tuple[str, ...] = ()
    metrics_public: bool = False

    def __post_init__(self) -> None:
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("the API key must be at least 8 characters long")
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: no request could be served ('*' allows any)")

    @property
    def open_paths(self) -> frozenset[str]:
        """Paths answered without the key."""
        return OPEN_PATHS | {"/metrics"} if self.metrics_public else OPEN_PATHS


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen on a non-loopback ``host`` without a key unless ``insecure``.

    Raises:
        ValueError: naming the ways out.
    """
    if api_key is None and not insecure and not is_loopback(host):
        raise ValueError(
            f"--host {host} is reachable from other machines: give an API key (--api-key, or "
            f"the {ENV_API_KEY} environment variable), or --insecure to serve without one"
        )


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this ``Host`` header is served."""
    name = _host_name(header)
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def key_matches(headers: dict[bytes, bytes], api_key: str) -> bool:
    """Whether ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` carries ``api_key``
    (constant-time comparison)."""
    given = headers.get(b"x-api-key")
    if given is None:
        scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
        given = value.strip() if scheme.lower() == b"bearer" else b""
    return hmac.compare_digest(given, api_key.encode())


class HostCheck:
    """ASGI middleware: 400 for a ``Host`` header that is not allowed."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed_hosts):
                message = f"request: host {host!r} is not served here (see --allowed-host)"
                await error_response(scope, 400, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiKeyCheck:
    """ASGI middleware: 401 for a request without the key, outside the open paths."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        if security.api_key is None:
            raise ValueError("ApiKeyCheck needs security.api_key")
        self.app = app
        self.api_key = security.api_key
        self.open_paths = security.open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in self.open_paths
            and not key_matches(dict(scope["headers"]), self.api_key)
        ):
            message = "request: missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"
            headers = {"www-authenticate": "Bearer"}
            await error_response(scope, 401, message, headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)
