"""Track ids for detections in a sequence of frames, from Roboflow's ``trackers`` library.

:class:`Tracker` gives each detection of a frame the id of the object it belongs to, the same
id from frame to frame while the object stays in view (``pip install 'efficientdet[track]'``).
The association itself, Kalman motion models and the track life cycle, is the library's
(``trackers`` 2.6: SORT, ByteTrack, OC-SORT); this module names the choices, maps the
thresholds a user sets onto each tracker's own arguments and keeps the detections in the
order the detector gave them.

Which tracker and which thresholds: the defaults here are the measured best on the generated
tracking benchmark (``benchmarks/tracking_study.py``, table in the README): ByteTrack with the
library's thresholds, fed the detector's boxes down to a score of
:data:`TRACK_SCORE_THRESHOLD`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .predictor import Detection

__all__ = [
    "DEFAULT_TRACKER",
    "MEASURED_DEFAULTS",
    "NO_TRACK",
    "TRACK_SCORE_THRESHOLD",
    "TRACKER_NAMES",
    "Tracker",
    "TrackerOptions",
    "import_trackers",
    "library_defaults",
    "tracked_ids",
]

TRACKER_NAMES = ("bytetrack", "sort", "ocsort")
# ByteTrack led at every score threshold on the benchmark (README "Tracking"), and the
# detector's boxes down to 0.2 gave it its best HOTA and IDF1 there.
DEFAULT_TRACKER = "bytetrack"
TRACK_SCORE_THRESHOLD = 0.2
NO_TRACK = -1  # the track id of a detection no confirmed track holds (yet)

# Each option of TrackerOptions -> the argument of the trackers' classes it sets, and which
# trackers have it. OC-SORT has no activation threshold: it starts tracks from every
# detection above its high threshold.
_ARGUMENTS = {
    "activation_threshold": ("track_activation_threshold", ("bytetrack", "sort")),
    "high_threshold": ("high_conf_det_threshold", ("bytetrack", "ocsort")),
    "iou_threshold": ("minimum_iou_threshold", TRACKER_NAMES),
    "lost_buffer": ("lost_track_buffer", TRACKER_NAMES),
    "min_frames": ("minimum_consecutive_frames", TRACKER_NAMES),
}


# Thresholds that replace the trackers library's defaults, per tracker, where the benchmark
# (benchmarks/tracking_study.py, README "Tracking") found better ones; an option a user sets
# wins. Empty: on the benchmark's tuning sequences the library's own were the best of the grid
# for ByteTrack and OC-SORT, and the SORT setting picked there did not beat them at SORT's own
# best score threshold on the test sequences.
MEASURED_DEFAULTS: dict[str, dict[str, Any]] = {}


def import_trackers() -> Any:
    """The ``trackers`` module; ``ImportError`` saying how to install it when it is missing."""
    try:
        import trackers
    except ImportError as e:
        raise ImportError(
            "tracking needs the trackers library, which is not installed: "
            "pip install 'efficientdet[track]'"
        ) from e
    return trackers


@dataclass(frozen=True)
class TrackerOptions:
    """Which tracker, and the thresholds that change what it does (None: the default).

    Attributes:
        name: ``"bytetrack"``, ``"sort"`` or ``"ocsort"``.
        activation_threshold: smallest score that starts a new track (ByteTrack, SORT).
        high_threshold: detections scoring at least this are matched first; ByteTrack
            matches the rest to the tracks left over, OC-SORT ignores them.
        iou_threshold: smallest IoU between a track's predicted box and a detection to
            match them.
        lost_buffer: frames (at 30 fps; scaled to the video's rate) a track that lost its
            object is kept, to pick it up again after an occlusion.
        min_frames: frames in a row a new track must be matched before it gets an id.
    """

    name: str = DEFAULT_TRACKER
    activation_threshold: float | None = None
    high_threshold: float | None = None
    iou_threshold: float | None = None
    lost_buffer: int | None = None
    min_frames: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TRACKER_NAMES:
            raise ValueError(
                f"tracker {self.name!r} is not one of {', '.join(map(repr, TRACKER_NAMES))}"
            )
        for option, (_, names) in _ARGUMENTS.items():
            if getattr(self, option) is not None and self.name not in names:
                raise ValueError(f"the {self.name} tracker has no {option.replace('_', ' ')}")
        for option in ("activation_threshold", "high_threshold", "iou_threshold"):
            value = getattr(self, option)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{option} must be in [0, 1], got {value}")
        if self.lost_buffer is not None and self.lost_buffer < 0:
            raise ValueError(f"lost_buffer must be >= 0, got {self.lost_buffer}")
        if self.min_frames is not None and self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")

    def arguments(self, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The keyword arguments of the ``trackers`` class: the options set here, else
        ``defaults[name]`` (default :data:`MEASURED_DEFAULTS`; ``{}``: the library's own)."""
        chosen = dict((MEASURED_DEFAULTS if defaults is None else defaults).get(self.name, {}))
        chosen.update({
            option: getattr(self, option) for option in _ARGUMENTS if getattr(self, option) is not None
        })
        return {_ARGUMENTS[option][0]: value for option, value in chosen.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tracker_class(name: str) -> Any:
    trackers = import_trackers()
    classes = {
        "bytetrack": trackers.ByteTrackTracker,
        "sort": trackers.SORTTracker,
        "ocsort": trackers.OCSORTTracker,
    }
    return classes[name]


def library_defaults(name: str) -> dict[str, Any]:
    """The trackers library's own value of each :class:`TrackerOptions` option that tracker
    ``name`` has (read from its signature)."""
    parameters = inspect.signature(_tracker_class(name).__init__).parameters
    return {
        option: parameters[argument].default
        for option, (argument, names) in _ARGUMENTS.items() if name in names
    }


def _build(
    options: TrackerOptions, frame_rate: float, defaults: Mapping[str, Mapping[str, Any]] | None
) -> Any:
    return _tracker_class(options.name)(frame_rate=frame_rate, **options.arguments(defaults))


class Tracker:
    """Track ids for the detections of one sequence of frames (a video, a stream, a folder
    of frames), frame by frame.

    ::

        tracker = Tracker("bytetrack", frame_rate=25)
        for image in frames:
            detection = tracker.update(detector.predict(image)[0])
            detection["track_ids"]  # Tensor[K] int64, NO_TRACK (-1) where none

    Args:
        options: the tracker and its thresholds; a name for the defaults.
        frame_rate: frames per second of the sequence; scales how long lost tracks are kept.
        defaults: thresholds per tracker for the options not set (default
            :data:`MEASURED_DEFAULTS`; ``{}`` for the trackers library's own).
    """

    def __init__(
        self, options: TrackerOptions | str = DEFAULT_TRACKER, *, frame_rate: float = 30.0,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.options = TrackerOptions(options) if isinstance(options, str) else options
        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        self.frame_rate = float(frame_rate)
        self._tracker = _build(self.options, self.frame_rate, defaults)
        import supervision  # a dependency of trackers: the Detections type it takes

        self._supervision = supervision

    def reset(self) -> None:
        """Forget every track: the next frame starts a new sequence, ids from 0 again."""
        self._tracker.reset()

    def update(self, detection: Detection, timestamp: float | None = None) -> Detection:
        """Match one frame's detections to the tracks.

        Args:
            detection: ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K], "labels":
                Tensor[K]}`` of this frame (every box the tracker should see: ByteTrack uses
                the low-scoring ones to keep tracks alive through occlusions).
            timestamp: when the frame was taken, in seconds, for a live stream whose frames
                do not come at a fixed rate; None: one frame after the last one. Use one or
                the other for a whole sequence.

        Returns:
            The same dict (a copy) with ``"track_ids": Tensor[K] int64``, in the order of
            the detections: the id (0, 1, ...) of the track each belongs to, :data:`NO_TRACK`
            for one no confirmed track holds (a new track not yet confirmed, a stray box).
        """
        boxes = detection["boxes"].detach().cpu().numpy().astype(np.float32).reshape(-1, 4)
        count = len(boxes)
        detections = self._supervision.Detections(
            xyxy=boxes,
            confidence=detection["scores"].detach().cpu().numpy().astype(np.float32),
            class_id=detection["labels"].detach().cpu().numpy().astype(int),
            data={"index": np.arange(count)},
        )
        result = self._tracker.update(detections, timestamp=timestamp)
        ids = np.full(count, NO_TRACK, dtype=np.int64)
        if len(result):
            ids[np.asarray(result.data["index"], dtype=np.int64)] = result.tracker_id
        return {**detection, "track_ids": torch.from_numpy(ids)}


def tracked_ids(detection: Detection) -> Tensor:
    """``detection["track_ids"]``, or :data:`NO_TRACK` for every box when it has none."""
    ids = detection.get("track_ids")
    if ids is None:
        return torch.full((len(detection["boxes"]),), NO_TRACK, dtype=torch.int64)
    return ids
