"""What tracking keeps for the sequence being predicted: the tracker, the trails, the counts.

A prediction run tracks one sequence at a time (a video, a live stream, or the frames of one
folder, in order); :meth:`TrackingSession.start` begins a new one whenever the sequence
changes, so ids, trails and counts never carry over from one to the next.
:meth:`TrackingSession.update` gives a frame's detections their track ids and counts, and
:meth:`TrackingSession.annotate` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

from .counting import Counter, CountLine, Zone
from .predictor import Detection
from .tracking import NO_TRACK, Tracker, TrackerOptions
from .visualize import ClassNames
from .visualize_tracks import DEFAULT_TRAIL, Trails, draw_counts, draw_tracks

__all__ = ["TrackingConfig", "TrackingSession", "image_sequence"]


def image_sequence(file_name: str) -> str:
    """The sequence a still image belongs to when tracking: the frames of its folder."""
    return f"folder:{PurePosixPath(file_name).parent}"


@dataclass(frozen=True)
class TrackingConfig:
    """How a prediction run tracks.

    Attributes:
        tracker: which tracker and its thresholds.
        lines: lines whose crossings are counted, by direction.
        zones: polygons whose objects are counted, per frame.
        trail: anchors drawn behind each tracked object (0: none).
    """

    tracker: TrackerOptions = TrackerOptions()
    lines: tuple[CountLine, ...] = ()
    zones: tuple[Zone, ...] = ()
    trail: int = DEFAULT_TRAIL


class TrackingSession:
    """The tracker, trails and counts of the sequence being predicted.

    Args:
        config: how to track.
    """

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.sequence: str | None = None
        self._tracker: Tracker | None = None
        self._first_id = 0
        self._trails = Trails(config.trail)
        self._counter = Counter(config.lines, config.zones)

    def start(self, sequence: str, frame_rate: float = 30.0, *, first_id: int = 0) -> None:
        """Begin tracking ``sequence`` (a name) unless it is the one being tracked: a fresh
        tracker for ``frame_rate`` frames per second, trails and counts cleared.

        Args:
            sequence: names the sequence; the same name continues it.
            frame_rate: frames per second (how long lost tracks are kept scales with it).
            first_id: the ids handed out start here (a resumed run continues after the ids
                it wrote).
        """
        if sequence == self.sequence and self._tracker is not None:
            return
        self.sequence = sequence
        self._tracker = Tracker(self.config.tracker, frame_rate=frame_rate)
        self._first_id = first_id
        self._trails.reset()
        self._counter.reset()

    def end(self) -> None:
        """The current sequence is over; the next :meth:`start` begins a new one."""
        self.sequence = None
        self._tracker = None

    def update(
        self, detection: Detection, timestamp: float | None = None
    ) -> tuple[Detection, dict[str, Any] | None]:
        """Track one frame of the current sequence.

        Args:
            detection: the frame's ``{"boxes", "scores", "labels"}``.
            timestamp: seconds, for frames that do not come at a fixed rate (live streams).

        Returns:
            ``(detection with "track_ids", counts)``; ``counts`` as
            :meth:`Counter.update` gives them, None without lines or zones.
        """
        if self._tracker is None:
            raise RuntimeError("TrackingSession.update before start()")
        tracked = self._tracker.update(detection, timestamp)
        if self._first_id:
            ids = tracked["track_ids"]
            tracked["track_ids"] = ids.where(ids == NO_TRACK, ids + self._first_id)
        self._trails.update(tracked["boxes"], tracked["track_ids"])
        counts = self._counter.update(tracked["boxes"], tracked["track_ids"]) if self._counter else None
        return tracked, counts

    def annotate(
        self, image: Image.Image, detection: Detection, counts: dict[str, Any] | None,
        class_names: ClassNames | None,
    ) -> Image.Image:
        """A copy of ``image`` with the tracked boxes, their trails, and the lines and zones
        with their counts."""
        canvas = draw_tracks(image, detection, self._trails, class_names)
        if self._counter:
            draw_counts(canvas, self.config.lines, self.config.zones, counts)
        return canvas
