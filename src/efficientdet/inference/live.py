"""Live sources: RTSP / HTTP / RTMP / UDP / TCP streams and cameras, read through PyAV.

A live source does not wait for the detector. :class:`LiveReader` decodes it in a thread of
its own and keeps only the newest frame: when the detector is slower than the stream, the
frames it had no time for are dropped (and counted) instead of queueing up, so what it sees
is never more than one frame old. When the stream drops (a read error, a timeout, the end of
a stream without a duration), the thread reopens it after a back-off (0.5 s, 1 s, 2 s, ... up to
``max_delay``), for as long as ``give_up_after`` seconds pass without a frame. A source
with a duration (a video file behind an ``http://`` URL) that comes to its end has ended:
reading stops there instead of playing it again. Order: frames
come out in the order they were decoded, each at most once. Memory: one decoded frame
waiting, at most. Shutdown: :meth:`LiveReader.stop` (also leaving the ``with`` block, at
``duration``, on Ctrl-C in the consuming thread) ends the thread after its current read,
which a read timeout bounds.

:func:`is_stream` says which sources are live (URLs of those schemes, and camera indices
such as ``0``); :func:`open_live` opens one with PyAV.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

__all__ = [
    "STREAM_SCHEMES",
    "LiveFrame",
    "LiveOptions",
    "LiveReader",
    "SourceEnded",
    "is_stream",
    "live_frames",
    "open_live",
    "redact",
    "scrub",
    "stream_name",
]

logger = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset(
    {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp"}
)
THREAD_NAME = "efficientdet-live"


def is_stream(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a live source: a URL whose scheme is one of
    :data:`STREAM_SCHEMES`, or a camera index (``"0"``, ``"1"``, ...) that is not also the
    name of a file here."""
    if not isinstance(source, str):
        return False
    scheme = source.partition("://")[0].lower() if "://" in source else ""
    if scheme in STREAM_SCHEMES:
        return True
    return source.isdigit() and not os.path.exists(source)


def redact(source: str) -> str:
    """``source`` with the password of its URL replaced by ``***`` (for records and logs)."""
    if "://" not in source:
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def scrub(text: str, source: str) -> str:
    """``text`` with the password of ``source``'s URL replaced by ``***`` wherever it shows:
    FFmpeg's error messages name the URL they opened, password included."""
    password = urlsplit(source).password if "://" in source else None
    if not password:
        return text
    return text.replace(source, redact(source)).replace(password, "***")


def stream_name(source: str) -> str:
    """A short file-name-safe name for a live source: ``camera0`` for camera 0, else the
    last part of the URL's path without its extension (the host when there is none)."""
    if source.isdigit():
        return f"camera{source}"
    parts = urlsplit(source)
    last = parts.path.rstrip("/").rpartition("/")[2].rpartition(".")[0] or parts.path.rstrip("/").rpartition("/")[2]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", last or parts.hostname or "stream").strip("._")
    return name or "stream"


@dataclass(frozen=True)
class LiveOptions:
    """How a live source is read.

    Attributes:
        duration: seconds after which reading stops; None: until the stream ends for good
            or :meth:`LiveReader.stop`.
        open_timeout: seconds to wait for the stream to open.
        read_timeout: seconds a read may block before the stream counts as dropped.
        first_delay: the first wait before reopening a dropped stream; it doubles on each
            failed try.
        max_delay: the longest wait between tries.
        give_up_after: seconds without a frame after which the source is given up.
    """

    duration: float | None = None
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    first_delay: float = 0.5
    max_delay: float = 8.0
    give_up_after: float = 60.0

    def __post_init__(self) -> None:
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        for name in ("open_timeout", "read_timeout", "first_delay", "max_delay", "give_up_after"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def _camera(index: str) -> tuple[str, str]:
    """(file, format) of camera ``index`` for FFmpeg's device input on this platform."""
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return index, "avfoundation"
    raise ValueError(f"camera {index}: camera indices work on Linux and macOS; give a stream URL")


def open_live(av: Any, source: str, options: LiveOptions) -> Any:
    """Open a live source with PyAV: a camera index through the platform's device input,
    RTSP over TCP (steadier than UDP through routers), any other URL as FFmpeg reads it.

    Raises:
        av.FFmpegError, OSError: it could not be opened.
        ValueError: a camera index where cameras cannot be opened by index.
    """
    timeout = (options.open_timeout, options.read_timeout)
    if source.isdigit():
        file, kind = _camera(source)
        return av.open(file, format=kind, timeout=timeout)
    settings = {"rtsp_transport": "tcp"} if source.lower().startswith("rtsp") else {}
    return av.open(source, options=settings, timeout=timeout)


def live_frames(
    av: Any, source: str, options: LiveOptions, on_open: Callable[[Any], None] | None = None
) -> Iterator[Any]:
    """The decoded frames of the first video stream of a live source, as they come; the
    source is opened on the first ``next`` (then ``on_open(stream)`` is called with its
    PyAV video stream) and closed when the generator is closed.

    Raises:
        av.FFmpegError, OSError, ValueError: it could not be opened or read.
    """
    container = open_live(av, source, options)
    try:
        if not container.streams.video:
            raise ValueError("has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if on_open is not None:
            on_open(stream)
        yield from container.decode(stream)
        if container.duration:  # a file behind the URL (a live stream has no duration)
            raise SourceEnded
    finally:
        container.close()


class SourceEnded(Exception):
    """Raised by :func:`live_frames` at the end of a source of known duration (a video file
    served over HTTP, a finished recording): read to its end, not dropped, so
    :class:`LiveReader` stops instead of reconnecting (which would play it again)."""


@dataclass(frozen=True)
class LiveFrame:
    """A frame taken from a live source.

    Attributes:
        image: the upright RGB frame.
        number: frames decoded from the source before this one (across reconnections), so
            the gap between two taken frames is what was dropped between them.
        time: seconds from the start of reading to when the frame was decoded.
        dropped: frames decoded and replaced before they were taken, so far.
    """

    image: Image.Image
    number: int
    time: float
    dropped: int


class LiveReader(AbstractContextManager["LiveReader"]):
    """Read a live source in a thread, keeping the newest frame (module docstring).

    ::

        with LiveReader(lambda: frames_of(open_live(av, url, options)), to_image, options) as reader:
            for frame in reader:     # blocks until a frame newer than the last one
                ...

    Args:
        open_frames: opens the source and returns its decoded frames (a generator; closing
            it closes the source); called again to reconnect.
        to_image: a decoded frame -> upright RGB image; run only for the frames taken.
        options: duration, timeouts and back-off.
        name: the source, for messages.
        source: the source as opened, whose password (if its URL has one) is hidden in
            every message (:func:`scrub`).
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self,
        open_frames: Callable[[], Iterator[Any]],
        to_image: Callable[[Any], Image.Image],
        options: LiveOptions | None = None,
        *,
        name: str = "stream",
        source: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_frames = open_frames
        self._source = source
        self._to_image = to_image
        self.options = options or LiveOptions()
        self.name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._slot: tuple[Any, int, float] | None = None  # (frame, number, time)
        self._finished = False
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self.decoded = 0  # frames decoded so far
        self.dropped = 0  # frames decoded and replaced before they were taken
        self.reconnects = 0
        self.error: str | None = None  # why the source was given up; None: stopped or ended

    def __enter__(self) -> LiveReader:
        self._start = self._clock()
        self._thread = threading.Thread(target=self._read, name=THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (at most a read timeout and a second)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.options.read_timeout + 1.0)
            if self._thread.is_alive():
                logger.warning("%s: the reader thread is still blocked in a read; leaving it", self.name)
            self._thread = None

    def elapsed(self) -> float:
        """Seconds since reading started."""
        return self._clock() - self._start

    # ---- the reader thread ---------------------------------------------------------------

    def _publish(self, frame: Any) -> None:
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = (frame, self.decoded, self._clock() - self._start)
            self.decoded += 1
            self._cond.notify_all()

    def _read_until_drop(self) -> tuple[str, bool]:
        """Open the source and publish its frames until it drops or a stop; returns the
        reason it ended and whether any frame came (reason ``""``: it came to its end for
        good, :class:`SourceEnded`)."""
        got_frame = False
        try:
            frames = self._open_frames()
        except Exception as e:  # FFmpegError, OSError, ValueError: all mean "not now"
            return f"could not open ({e})", False
        try:
            for frame in frames:
                self._publish(frame)
                got_frame = True
                if self._stop.is_set():
                    return "stopped", True
            return "the stream ended", got_frame
        except SourceEnded:
            return "", got_frame
        except Exception as e:
            return f"{'read' if got_frame else 'open'} failed ({e})", got_frame
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    def _read(self) -> None:
        failures = 0
        last_frame = self._clock()
        try:
            while not self._stop.is_set():
                reason, got_frame = self._read_until_drop()
                reason = scrub(reason, self._source)
                if self._stop.is_set() or not reason:
                    break
                if got_frame:
                    failures, last_frame = 0, self._clock()
                if self._clock() - last_frame >= self.options.give_up_after:
                    self.error = f"{reason}; no frame for {self.options.give_up_after:g} s, gave up"
                    break
                delay = min(self.options.max_delay, self.options.first_delay * 2**failures)
                failures += 1
                logger.warning("%s: %s; reconnecting in %.2g s", self.name, reason, delay)
                if self._stop.wait(delay):
                    break
                self.reconnects += 1
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    # ---- the consumer --------------------------------------------------------------------

    def _deadline(self) -> float | None:
        duration = self.options.duration
        return None if duration is None else self._start + duration

    def __iter__(self) -> Iterator[LiveFrame]:
        """The newest frame each time one newer than the last is there, until the source is
        given up, :meth:`stop` or ``duration``."""
        deadline = self._deadline()
        while True:
            with self._cond:
                while self._slot is None and not self._finished and not self._stop.is_set():
                    wait = None if deadline is None else deadline - self._clock()
                    if wait is not None and wait <= 0:
                        return
                    self._cond.wait(1.0 if wait is None else min(wait, 1.0))
                if self._slot is None or self._stop.is_set():
                    return
                frame, number, taken_at = self._slot
                self._slot = None
                dropped = self.dropped
            if deadline is not None and self._start + taken_at > deadline:
                return
            yield LiveFrame(self._to_image(frame), number, taken_at, dropped)
