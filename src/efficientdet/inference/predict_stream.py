"""Prediction over a live source (a stream URL or a camera): the newest frame, one at a time.

The stream is decoded in its own thread (:class:`~efficientdet.inference.live.LiveReader`);
this loop takes the newest frame, detects, tracks (with the frame's time, so the motion model
follows real time across dropped frames), draws, records and encodes it, then takes the next
newest. Each record carries ``frame`` (the frame's number in the stream: gaps are dropped
frames), ``time`` (seconds from the start of reading) and ``dropped`` (frames dropped so
far); the annotated ``<name>.mp4`` keeps real time (each frame shows at its time).

The stream ends at ``duration``, when it is given up (no frame for ``give_up_after`` seconds
through the reconnection tries: a failure of that input), or on Ctrl-C or SIGTERM (what a
service manager sends to stop it): then the frames taken so far are recorded and encoded,
the video closed, and the run ends with its files complete (``report.interrupted``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .live import LiveFrame, LiveOptions, LiveReader, live_frames
from .prediction_run import PredictionRun
from .sources import Input
from .video import DEFAULT_FRAME_RATE, VideoWriter, frame_rate, import_av, upright_frame

__all__ = ["predict_stream"]

logger = logging.getLogger(__name__)


class _StreamOutput:
    """The annotated video of a stream, made at its first frame (the stream's frame rate is
    known once it is open)."""

    def __init__(self, run: PredictionRun, av: Any, item: Input) -> None:
        self.run = run
        self.av = av
        self.path = run.pictures.path_for(item.path, ".mp4") if run.pictures is not None else None
        self.rate: Fraction = DEFAULT_FRAME_RATE
        self.writer: VideoWriter | None = None

    def on_open(self, stream: Any) -> None:
        """Called by the reader thread when the stream (re)opens: note its frame rate."""
        self.rate = frame_rate(stream)

    def write(self, image: Any, time: float) -> None:
        if self.path is None:
            return
        if self.writer is None:
            self.writer = VideoWriter(self.av, self.path, self.rate)
        self.writer.write(image, time)

    def close(self) -> Path | None:
        """Close the video; its path, or None when nothing was written."""
        if self.writer is None:
            return None
        self.writer.close()
        return self.path


def _predict_frame(run: PredictionRun, item: Input, frame: LiveFrame, output: _StreamOutput) -> None:
    """Detect, track, draw, encode and record one frame."""
    (detection,) = run.detect_images([frame.image])
    detection, counts = run.track(detection, f"stream:{item.index}", float(output.rate), frame.time)
    if output.path is not None:
        output.write(run.annotate(frame.image, detection, counts), frame.time)
    extra: dict[str, Any] = {"time": round(frame.time, 3), "dropped": frame.dropped}
    if counts is not None:
        extra["counts"] = counts
    name = output.path.name if output.path is not None else None
    run.log.write([run.record(item, frame.image.size, name, detection, frame=frame.number, extra=extra)])


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While reading a stream, SIGTERM stops it as Ctrl-C does (main thread only)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def predict_stream(run: PredictionRun, item: Input, options: LiveOptions) -> None:
    """Predict the live source ``item`` until it ends (module docstring); count it, its
    frames, drops and reconnections in the run's report, or fail it."""
    assert item.stream is not None
    try:
        av = import_av()
    except ImportError as e:
        run.fail(item.index, item.name, str(e))
        return
    output = _StreamOutput(run, av, item)
    source = item.stream
    done = 0
    reader = LiveReader(
        lambda: live_frames(av, source, options, output.on_open), upright_frame, options,
        name=item.name, source=source,
    )
    try:
        with _sigterm_interrupts(), reader, tqdm(desc=item.path.name, unit="frame", leave=False,
                                                 disable=not run.show_progress) as bar:
            for frame in reader:
                _predict_frame(run, item, frame, output)
                done += 1
                bar.update(1)
    except KeyboardInterrupt:
        logger.warning("%s: stopped (Ctrl-C or SIGTERM) after %d frames", item.name, done)
        run.report.interrupted = True
    finally:
        path = output.close()
    report = run.report
    report.frames += done
    report.dropped += reader.dropped
    report.reconnects += reader.reconnects
    if done:
        report.streams += 1
        if path is not None:
            report.outputs.append(path)
    elif output.path is not None:
        output.path.unlink(missing_ok=True)
    if reader.error is not None:
        run.fail(item.index, item.name, reader.error)
    elif not done and not report.interrupted:
        run.fail(item.index, item.name, f"no frame came in {reader.elapsed():.0f} s")
