"""``track(detector, source)``: tracked detections frame by frame, from Python.

The counterpart of ``Detector.predict`` for sequences, and of ``efficientdet predict --track``
without the files: it reads a video, a folder of frames, a live stream or camera, or any
iterable of images, runs the detector on each frame, gives the detections their track ids
(:class:`~efficientdet.inference.tracking.Tracker`) and counts (lines, zones), and yields one
:class:`TrackedFrame` per frame::

    from efficientdet import load_trained, track

    detector = load_trained("runs/train/best.safetensors")
    for frame in track(detector, "traffic.mp4", tracker="bytetrack"):
        frame.detection["track_ids"]        # Tensor[K] int64, -1 where no track holds the box
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..detection.transform import ImageSource, load_image
from .counting import CountLine, Zone
from .live import LiveOptions, LiveReader, is_stream, live_frames, redact
from .predictor import Detection, normalize_detections
from .sources import is_video, iter_sources
from .track_session import TrackingConfig, TrackingSession
from .tracking import DEFAULT_TRACKER, TRACK_SCORE_THRESHOLD, TrackerOptions
from .video import DEFAULT_FRAME_RATE, VideoFrames, import_av, upright_frame
from .video import frame_rate as stream_rate
from .visualize import ClassNames
from .visualize_tracks import DEFAULT_TRAIL

__all__ = ["TrackedFrame", "track"]

DetectorLike = Any  # a Detector (its .predict), or predict_fn(images) -> detections
Frames = Iterator[tuple[int, Image.Image, float | None]]  # (number, image, time)


@dataclass
class TrackedFrame:
    """One frame of a tracked sequence.

    Attributes:
        index: the frame's number in the source (for a live source: frames decoded before
            it, so gaps are frames dropped while the detector was busy).
        image: the frame, RGB.
        detection: ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K], "labels": Tensor[K],
            "track_ids": Tensor[K] int64}``, boxes scoring at least the threshold.
        counts: line crossings and zone counts (``Counter.update``), None without them.
        time: seconds from the start of reading (live sources), else None.
        picture: the frame with the tracks drawn, when ``draw=True``.
    """

    index: int
    image: Image.Image
    detection: Detection
    counts: dict[str, Any] | None = None
    time: float | None = None
    picture: Image.Image | None = None


def _predict_fn(detector: DetectorLike) -> Callable[[list[Image.Image]], Sequence[Any]]:
    predict = getattr(detector, "predict", None)
    if callable(predict):
        return predict
    if callable(detector):
        return detector
    raise TypeError(f"track needs a Detector or a predict function, got {type(detector).__name__}")


def _file_frames(source: Path) -> tuple[Frames, Callable[[], float]]:
    """A video's frames, or a folder's (or glob's) images in name order, and the rate
    (a video's is known once it is open, at its first frame)."""
    if not is_video(source):
        paths = [Path(p) for p in iter_sources([source]) if not is_video(p)]
        return ((n, load_image(p), None) for n, p in enumerate(paths)), lambda: float(DEFAULT_FRAME_RATE)
    av = import_av()
    rate = [float(DEFAULT_FRAME_RATE)]

    def video() -> Frames:
        with av.open(str(source)) as container:
            if not container.streams.video:
                raise ValueError(f"{source}: has no video stream")
            stream = container.streams.video[0]
            rate[0] = float(stream_rate(stream))
            frames = VideoFrames(av, container, stream)
            for number, image in enumerate(frames):
                yield number, image, None
            if frames.error is not None:
                raise ValueError(f"{source}: video decoding failed ({frames.error})")

    return video(), lambda: rate[0]


def _live_frames(source: str, options: LiveOptions) -> tuple[Frames, Callable[[], float]]:
    """A live source's taken frames, and its rate (known once it is open)."""
    av = import_av()
    rate = [float(DEFAULT_FRAME_RATE)]

    def on_open(stream: Any) -> None:
        rate[0] = float(stream_rate(stream))

    def frames() -> Frames:
        with LiveReader(lambda: live_frames(av, source, options, on_open), upright_frame,
                        options, name=redact(source), source=source) as reader:
            for frame in reader:
                yield frame.number, frame.image, frame.time
            if reader.error is not None:
                raise ValueError(f"{redact(source)}: {reader.error}")

    return frames(), lambda: rate[0]


def _frames(
    source: str | Path | int | Iterable[ImageSource], live: LiveOptions
) -> tuple[Frames, Callable[[], float]]:
    """``(number, image, time)`` per frame of ``source``, and its frame rate (ask once the
    first frame came)."""
    if isinstance(source, int):
        source = str(source)
    if isinstance(source, str) and is_stream(source):
        return _live_frames(source, live)
    if isinstance(source, (str, os.PathLike)):
        return _file_frames(Path(source))
    images = ((n, load_image(image), None) for n, image in enumerate(source))
    return images, lambda: float(DEFAULT_FRAME_RATE)


def track(
    detector: DetectorLike,
    source: str | Path | int | Iterable[ImageSource],
    *,
    tracker: str | TrackerOptions = DEFAULT_TRACKER,
    score_threshold: float = TRACK_SCORE_THRESHOLD,
    lines: Sequence[CountLine] = (),
    zones: Sequence[Zone] = (),
    duration: float | None = None,
    frame_rate: float | None = None,
    draw: bool = False,
    class_names: ClassNames | None = None,
    trail: int = DEFAULT_TRAIL,
) -> Iterator[TrackedFrame]:
    """Detect and track objects in every frame of ``source``, lazily.

    Args:
        detector: a :class:`~efficientdet.Detector` (its ``predict`` is used) or any
            ``predict_fn(images) -> [{"boxes", "scores", "labels"}]``.
        source: a video file; a folder or glob of frames (in name order); a live stream
            URL (``rtsp://``, ``http://``, ...) or camera index (``0``), read in a thread
            that keeps the newest frame (frames are dropped while the detector is busy);
            or an iterable of images (paths, ``PIL`` images, arrays).
        tracker: the tracker's name, or :class:`TrackerOptions` with its thresholds.
        score_threshold: detections scoring below it are not given to the tracker.
        lines, zones: count crossings of these lines and objects inside these zones.
        duration: live sources: stop after this many seconds.
        frame_rate: frames per second of the source when it does not say (image folders and
            iterables: 25 by default).
        draw: also give each frame's picture with the tracks drawn (``picture``).
        class_names: names by label, for the drawn tags.
        trail: positions drawn behind each object (with ``draw``).

    Yields:
        A :class:`TrackedFrame` per frame (per taken frame, for live sources).
    """
    predict = _predict_fn(detector)
    options = TrackerOptions(tracker) if isinstance(tracker, str) else tracker
    session = TrackingSession(TrackingConfig(options, tuple(lines), tuple(zones), trail))
    frames, rate = _frames(source, LiveOptions(duration=duration))
    for number, image, time in frames:
        session.start("source", frame_rate or rate())  # at the first frame; then a no-op
        (detection,) = normalize_detections(predict([image]), 1)
        keep = detection["scores"] >= score_threshold
        detection = {key: value[keep] for key, value in detection.items()}
        tracked, counts = session.update(detection, time)
        picture = session.annotate(image, tracked, counts, class_names) if draw else None
        yield TrackedFrame(number, image, tracked, counts, time, picture)
