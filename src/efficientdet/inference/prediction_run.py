"""What every input of one prediction run shares: the predictor, the sinks, the tracking
state and the report.

:class:`PredictionRun` is handed to the per-kind steps of the pipeline (still images and
videos in :mod:`~efficientdet.inference.predict`, live streams in
:mod:`~efficientdet.inference.predict_stream`); each detects, tracks when asked
(:class:`~efficientdet.inference.track_session.TrackingSession`), draws, and records through
it, so records and pictures look the same whatever the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .pictures import OutputNames, PictureWriter
from .predictor import Detection, LetterboxPredictor, PredictFn, normalize_detections
from .reader import Decoded
from .records import (
    FAILURES_FILE,
    PREDICTIONS_FILE,
    RECORDS_FILE,
    Categories,
    LabelMap,
    PredictionFailure,
    RecordLog,
    image_record,
    read_records,
)
from .sources import Input
from .track_session import TrackingConfig, TrackingSession, image_sequence
from .visualize import ClassNames

__all__ = ["PredictionReport", "PredictionRun", "open_run"]

logger = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    """What :func:`~efficientdet.inference.predict.run_prediction` did.

    Attributes:
        images: still images predicted and written.
        videos: videos predicted and written (a video cut short by a decoding error counts
            here and in ``failures``).
        frames: video and stream frames predicted, over all videos and streams.
        detections: detections written to the JSON file, over images and frames.
        failures: inputs skipped or cut short, each with its reason.
        outputs: files written, annotated pictures and videos, in input order.
        predictions_path: the COCO results JSON file.
        resumed: records (images and frames) an earlier run had written, with ``resume``;
            the counts above are this call's, ``failures`` includes the earlier run's.
        streams: live streams read.
        dropped: stream frames dropped because the detector was busy.
        reconnects: times a dropped stream was opened again.
        interrupted: Ctrl-C or SIGTERM ended a live stream (and the run, with its files
            complete).
        mot_paths: the MOT Challenge files written.
    """

    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failures: list[PredictionFailure] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    predictions_path: Path | None = None
    resumed: int = 0
    streams: int = 0
    dropped: int = 0
    reconnects: int = 0
    interrupted: bool = False
    mot_paths: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was read completely."""
        return not self.failures

    def summary(self) -> str:
        """One line for the command line: counts, then failures."""
        text = f"{self.images} images, {self.videos} videos"
        if self.streams:
            text += f", {self.streams} streams"
        text += f" ({self.frames} frames"
        if self.streams:
            text += f", {self.dropped} dropped, {self.reconnects} reconnections"
        text += f"), {self.detections} detections, {len(self.failures)} failures"
        if self.resumed:
            text += f" (resumed after {self.resumed} records)"
        if self.interrupted:
            text += "; stopped by Ctrl-C / SIGTERM"
        if self.predictions_path is not None:
            text += f"; results in {self.predictions_path}"
        return text


@dataclass
class PredictionRun:
    """The predictor and the sinks every input of one run shares."""

    predict_fn: PredictFn
    batch_size: int
    show_progress: bool
    categories: Categories
    log: RecordLog
    pictures: PictureWriter | None  # None: no pictures or videos written
    report: PredictionReport
    tracking: TrackingSession | None = None  # None: no tracking
    # A resumed run's highest track id per sequence: its ids continue after them.
    resumed_ids: dict[str, int] = field(default_factory=dict)

    def fail(self, index: int, path: Path | str, reason: str) -> None:
        self.report.failures.append(PredictionFailure(str(path), reason))
        self.log.fail(index, path, reason)
        logger.warning("%s: %s", path, reason)

    def detect(self, batch: list[Decoded]) -> list[Detection]:
        """Detections of decoded images, in their pixels: the letterboxed pixels to a
        :class:`LetterboxPredictor`, the images to any other ``predict_fn``."""
        fn = self.predict_fn
        if isinstance(fn, LetterboxPredictor) and all(d.pixels is not None for d in batch):
            pixels = torch.stack([d.pixels for d in batch if d.pixels is not None])
            return fn.detect_letterboxed(pixels, [d.info for d in batch if d.info is not None])
        images = [d.image for d in batch if d.image is not None]
        return normalize_detections(fn(images), len(batch))

    def detect_images(self, images: list[Image.Image]) -> list[Detection]:
        """Detections of decoded frames, in their pixels."""
        return normalize_detections(self.predict_fn(images), len(images))

    def track(
        self, detection: Detection, sequence: str, frame_rate: float = 30.0,
        timestamp: float | None = None,
    ) -> tuple[Detection, dict[str, Any] | None]:
        """With tracking, ``detection`` with its track ids and the frame's counts, as frame
        of ``sequence`` (a new name starts a new sequence); without, as it is and None."""
        if self.tracking is None:
            return detection, None
        self.tracking.start(sequence, frame_rate, first_id=self.resumed_ids.get(sequence, -1) + 1)
        return self.tracking.update(detection, timestamp)

    def annotate(
        self, image: Image.Image, detection: Detection, counts: dict[str, Any] | None
    ) -> Image.Image:
        """``image`` with the detections drawn: confident boxes, or with tracking the
        tracked ones by id with their trails, lines and zones."""
        assert self.pictures is not None
        if self.tracking is not None:
            return self.tracking.annotate(image, detection, counts, self.pictures.class_names)
        return self.pictures.annotate(image, detection)

    def save_picture(
        self, item: Decoded, detection: Detection, counts: dict[str, Any] | None = None
    ) -> str | None:
        """The annotated picture's name in the output folder; None when not written."""
        if self.pictures is None or item.image is None:
            return None
        path = self.pictures.path_for(item.input.path)
        try:
            self.pictures.save(path, self.annotate(item.image, detection, counts))
        except OSError as e:
            self.fail(item.input.index, item.input.path, f"could not write {path} ({e})")
            return None
        self.report.outputs.append(path)
        return path.name

    def record(
        self, item: Input, size: tuple[int, int], output: str | None, detection: Detection,
        frame: int | None = None, extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.report.detections += len(detection["boxes"])
        return image_record(
            item.index, item.name, size, output, self.categories.records(detection),
            item.digest, frame=frame, extra=extra,
        )


def open_run(
    predict_fn: PredictFn, out: Path, log: RecordLog, *, class_names: ClassNames | None,
    label_to_category_id: LabelMap | None, score_threshold: float, batch_size: int,
    show_progress: bool, pictures: bool, tracking: TrackingConfig | None = None,
) -> PredictionRun:
    """The run's shared state: a report that starts from what a resumed run did, output
    names clear of its files, and a tracking session when ``tracking`` is given."""
    report = PredictionReport(resumed=log.resumed)
    report.failures.extend(log.previous_failures)
    names = OutputNames([PREDICTIONS_FILE, RECORDS_FILE, FAILURES_FILE, *log.reserved])
    resumed_ids = _highest_ids(out) if tracking is not None and log.resumed else {}
    return PredictionRun(
        predict_fn=predict_fn,
        batch_size=batch_size,
        show_progress=show_progress,
        categories=Categories(label_to_category_id, class_names),
        log=log,
        pictures=PictureWriter(out, names, class_names, score_threshold) if pictures else None,
        report=report,
        tracking=TrackingSession(tracking) if tracking is not None else None,
        resumed_ids=resumed_ids,
    )


def _highest_ids(out: Path) -> dict[str, int]:
    """The highest track id the records of each folder of still images hold (a resumed run
    picks such a sequence up in the middle: its new ids must not reuse these). Videos and
    streams are redone from their first frame."""
    highest: dict[str, int] = {}
    for record in read_records(out):
        if "frame" in record:
            continue
        key = image_sequence(str(record["file_name"]))
        ids = [d["track_id"] for d in record["detections"] if d.get("track_id") is not None]
        if ids:
            highest[key] = max(highest.get(key, -1), *ids)
    return highest
