"""Reading one upload within the limits: size, deadline, and the image header seen early.

The body is read as it arrives, at most ``max_upload_bytes`` (413 beyond; from
``Content-Length`` before reading when the client sends one) and within ``body_timeout_s``
(408 beyond). While it arrives, the first bytes of the image (the raw body, or the first file
part of a multipart form) are read for the image header: as soon as the width and height are
known the request is charged its pixels (:meth:`~efficientdet.deploy.limits.Ticket.charge_pixels`,
413 above ``max_pixels``, 503 when the queue has no room), before the rest of a large upload
is taken in. When the header is not found early (a form whose first part is not the file, or
a header beyond the first 64 KiB) the charge is made from the whole body, still before
decoding.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from .limits import Limits, Refusal, Ticket

__all__ = ["PROBE_BYTES", "Upload", "image_size", "read_upload"]

PROBE_BYTES = 64 * 1024  # the image header is looked for in this many first bytes
_FILENAME = re.compile(rb'filename="([^"]*)"', re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    """One uploaded image, still encoded: its file name and bytes."""

    name: str
    data: bytes


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an image's header (its first bytes are enough for the
    common formats); None when they do not say (yet)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # not an image, or not enough of it yet: decoding will tell
        return None


class _HeaderProbe:
    """Looks for the image header in the first :data:`PROBE_BYTES` of a body.

    Args:
        name: the upload's name for a raw body.
        boundary: the multipart boundary (None for a raw body).
    """

    def __init__(self, name: str, boundary: bytes | None) -> None:
        self.name = name
        self.boundary = boundary
        self.prefix = b""
        self.done = False

    def feed(self, chunk: bytes) -> tuple[str, int, int] | None:
        """``(name, width, height)`` once the header has been seen, then never again."""
        if self.done:
            return None
        self.prefix += chunk[: PROBE_BYTES - len(self.prefix)]
        self.done = len(self.prefix) >= PROBE_BYTES
        start = 0
        if self.boundary is not None:
            part = self._file_part()
            if part is None:
                return None
            self.name, start = part
        size = image_size(self.prefix[start:])
        if size is None:
            return None
        self.done = True
        return self.name, size[0], size[1]

    def _file_part(self) -> tuple[str, int] | None:
        """``(file name, offset of its bytes)`` when the form's first part is a file."""
        assert self.boundary is not None
        delimiter = b"--" + self.boundary
        first = self.prefix.find(delimiter)
        if first < 0:
            return None
        head_start = first + len(delimiter)
        head_end = self.prefix.find(b"\r\n\r\n", head_start)
        if head_end < 0:
            return None
        found = _FILENAME.search(self.prefix, head_start, head_end)
        if found is None:  # the first part is a plain field: decided on the whole body
            self.done = True
            return None
        return found.group(1).decode("utf-8", "replace") or "upload", head_end + 4


async def read_upload(request: Request, limits: Limits, ticket: Ticket) -> Upload:
    """The image of a ``POST /predict``: a multipart form's first file, or the raw body
    (named by ``?name=``), with the request charged its pixels from the image header.

    Raises:
        Refusal: 400 (malformed form, no file, the client left), 408 (body too slow), 413
            (too many bytes or pixels), 503 (no room in the pixel queue).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_upload_bytes:
        raise Refusal(
            413, f"request: upload of {int(declared)} bytes is above the limit of "
            f"{limits.max_upload_bytes} bytes", reason="too_large",
        )
    content_type = request.headers.get("content-type", "")
    boundary = _BOUNDARY.search(content_type)
    multipart = content_type.startswith("multipart/form-data") and boundary is not None
    name = request.query_params.get("name") or "request body"
    probe = _HeaderProbe(name, boundary.group(1).encode() if multipart and boundary else None)
    try:
        body = await asyncio.wait_for(_read_body(request, limits, ticket, probe),
                                      limits.body_timeout_s)
    except asyncio.TimeoutError:  # the builtin TimeoutError too, from Python 3.11 on
        raise Refusal(
            408, f"request: the body did not arrive within the limit of "
            f"{limits.body_timeout_s:g} s", reason="body_timeout",
        ) from None
    except ClientDisconnect:
        raise Refusal(400, "request: the client left before sending the whole body",
                      reason="client_left") from None
    if multipart:
        name, body = await _form_file(request.headers, body)
    if not ticket.pixels:
        size = image_size(body)
        if size is not None:
            ticket.charge_pixels(name, *size)
    return Upload(name, body)


async def _read_body(request: Request, limits: Limits, ticket: Ticket, probe: _HeaderProbe) -> bytes:
    """The request body, refused (413) as soon as it passes the limit; the probe sees each
    chunk until it has found the image header."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_upload_bytes:
            raise Refusal(
                413, f"request: upload is above the limit of {limits.max_upload_bytes} bytes",
                reason="too_large",
            )
        chunks.append(chunk)
        seen = probe.feed(chunk)
        if seen is not None:
            ticket.charge_pixels(*seen)
    return b"".join(chunks)


async def _form_file(headers: Headers, body: bytes) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the first file in a multipart form (the whole body is in
    memory and within the upload limit already, so the parser's own part-size limit, which
    older Starlette versions lack, is not needed)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise Refusal(400, f"request: malformed multipart form ({err.message})",
                      reason="bad_form") from err
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise Refusal(
                400, "request: the multipart form has no file field (send the image as 'file')",
                reason="bad_form",
            )
        upload = files[0]
        return upload.filename or "upload", await upload.read()
    finally:
        await form.close()
