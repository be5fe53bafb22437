"""The records of a prediction run: ``predictions.jsonl`` and ``failures.jsonl`` as it goes,
read back to resume, and ``predictions.json`` (COCO results) at the end.

:class:`RecordLog` appends a batch of records at a time, flushed after each batch and fsync'd
every few seconds; with ``resume`` it first reads an earlier run's files back, cuts off what is
incomplete and says where to pick up (:class:`~efficientdet.inference.sources.ResumePoint`).
:class:`Categories` turns detections into JSON-ready dicts; :func:`write_coco` builds the COCO
file from the JSON Lines, record by record.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .predictor import Detection, normalize_detections
from .sources import ResumePoint
from .visualize import ClassNames

__all__ = [
    "DIGEST_KEY",
    "FAILURES_FILE",
    "PREDICTIONS_FILE",
    "RECORDS_FILE",
    "Categories",
    "LabelMap",
    "PredictionFailure",
    "RecordLog",
    "detection_records",
    "image_record",
    "read_records",
    "write_coco",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"
RECORDS_FILE = "predictions.jsonl"
FAILURES_FILE = "failures.jsonl"
DIGEST_KEY = "inputs_sha256"  # a record's digest of the input order up to its input

LabelMap = Mapping[int, int] | Sequence[int]


@dataclass
class PredictionFailure:
    """An input that was skipped (or a video cut short) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Categories:
    """Label 0..C-1 -> COCO category id and class name, for the records."""

    def __init__(self, label_to_category_id: LabelMap | None, class_names: ClassNames | None):
        self._label_map = label_to_category_id
        self._names = class_names

    def category(self, label: int) -> int:
        """The category id of ``label``; ``ValueError`` when the map has no entry for it."""
        if self._label_map is None:
            return label
        try:
            if isinstance(self._label_map, Mapping):
                return int(self._label_map[label])
            if label < 0:
                raise IndexError(label)
            return int(self._label_map[label])
        except (KeyError, IndexError) as e:
            raise ValueError(f"label {label} has no entry in label_to_category_id") from e

    def records(self, detection: Detection) -> list[dict[str, Any]]:
        """``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K], "labels": Tensor[K][,
        "track_ids": Tensor[K]]}`` -> ``K`` dicts ``{"box": [x1, y1, x2, y2], "score",
        "label", "category_id"[, "category"][, "track_id"]}``, boxes rounded to 0.01 px and
        scores to 1e-5; ``track_id`` (with track ids) is None where no track holds the box."""
        found = []
        track_ids = detection.get("track_ids")
        ids = track_ids.tolist() if track_ids is not None else [None] * len(detection["boxes"])
        for (x1, y1, x2, y2), score, label, track_id in zip(
            detection["boxes"].tolist(), detection["scores"].tolist(),
            detection["labels"].tolist(), ids, strict=True,
        ):
            item: dict[str, Any] = {
                "box": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)],
                "score": round(float(score), 5),
                "label": int(label),
                "category_id": self.category(int(label)),
            }
            if self._names is not None:
                item["category"] = self._names[int(label)]
            if track_ids is not None:
                item["track_id"] = int(track_id) if track_id >= 0 else None
            found.append(item)
        return found


def detection_records(
    prediction: Mapping[str, Any],
    *,
    class_names: ClassNames | None = None,
    label_to_category_id: LabelMap | None = None,
) -> list[dict[str, Any]]:
    """One detector result as JSON-ready dicts, the form ``predictions.jsonl`` uses.

    Args:
        prediction: ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K], "labels": Tensor[K]}``.
        class_names: names by label; adds ``"category"``.
        label_to_category_id: label -> category id (mapping or sequence); default the label.

    Returns:
        ``K`` dicts ``{"box": [x1, y1, x2, y2], "score", "label", "category_id"[, "category"]}``,
        boxes rounded to 0.01 px and scores to 1e-5.
    """
    (detection,) = normalize_detections([prediction], 1)
    return Categories(label_to_category_id, class_names).records(detection)


def image_record(
    index: int,
    file_name: str,
    size: tuple[int, int],
    output: str | None,
    detections: list[dict[str, Any]],
    digest: str,
    frame: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One line of ``predictions.jsonl`` (the fields are described in :func:`read_records`);
    ``size`` is ``(width, height)``; ``extra`` adds fields (``time``, ``dropped``,
    ``counts``) before the digest."""
    record: dict[str, Any] = {
        "index": index, "file_name": file_name, "width": size[0], "height": size[1],
    }
    if frame is not None:
        record["frame"] = frame
    record["output"] = output
    record["detections"] = detections
    record.update(extra or {})
    record[DIGEST_KEY] = digest
    return record


def _read_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """``(start offset, end offset, record)`` per line of a JSON Lines file; ``record`` is None
    for a line that is torn (no newline at the end) or not a JSON object."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            end = offset + len(line)
            record = None
            if line.endswith(b"\n"):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
                record = parsed if isinstance(parsed, dict) else None
            yield offset, end, record
            offset = end


def read_records(out_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The complete records of ``out_dir/predictions.jsonl``, in the order written.

    A record is ``{"index", "file_name", "width", "height", "output", "detections",
    "inputs_sha256"}`` (plus ``"frame"`` for a video or stream frame): ``index`` is the
    source's position in the run's input order (shards and resumed runs keep it), ``output``
    the annotated picture's name in ``out_dir`` (None if it could not be written or pictures
    were off), each detection is ``{"box": [x1, y1, x2, y2]`` in the image's pixels,
    ``"score"``, ``"label"`` (0..C-1), ``"category_id"``, ``"category"`` (the class name, when
    known), ``"track_id"`` (when tracking: the object's id, None for a box no track holds)``}``,
    and ``inputs_sha256`` is the :class:`~efficientdet.inference.sources.InputDigest` of the
    input order up to this source (what ``resume`` checks). A live stream's frames add
    ``"time"`` (seconds from the start of reading) and ``"dropped"`` (frames dropped so far);
    counting adds ``"counts"`` (:meth:`~efficientdet.inference.counting.Counter.update`).
    A torn last line (a run killed while writing it) is not a record and is skipped.
    """
    path = Path(out_dir) / RECORDS_FILE
    for _, _, record in _read_lines(path):
        if record is None:
            return
        yield record


def _dump_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _resume_point(run: str, done_index: int, checked: dict[str, Any] | None) -> ResumePoint:
    if checked is None:
        return ResumePoint(run=run, done_index=done_index)
    digest = checked.get(DIGEST_KEY)
    return ResumePoint(
        run=run, done_index=done_index, index=int(checked["index"]),
        file_name=str(checked["file_name"]), digest=str(digest) if digest is not None else None,
    )


class RecordLog:
    """``predictions.jsonl`` and ``failures.jsonl``: appended a batch at a time, flushed after
    each batch (a killed process loses nothing the kernel has), fsync'd every
    ``sync_seconds`` (a crashed machine loses at most that much).

    With ``resume``, the files of an earlier run are read back first: a torn last line is cut
    off, a video whose frames were being written is cut off to be done again, and
    :attr:`resume_point` says which inputs are done and which record the new inputs must
    match.

    Attributes:
        resume_point: where to pick up (done_index -1 for a fresh run).
        reserved: the output names the kept records use (not to be handed out again).
        resumed: records kept from the earlier run.
        previous_failures: the earlier run's failures of inputs that are done.
    """

    def __init__(self, out: Path, *, resume: bool, sync_seconds: float) -> None:
        self.path = out / RECORDS_FILE
        self.failures_path = out / FAILURES_FILE
        self.sync_seconds = sync_seconds
        self.resume_point = ResumePoint(run=str(out))
        self.reserved: list[str] = []
        self.resumed = 0
        self.previous_failures: list[PredictionFailure] = []
        if resume and self.path.exists():
            self._recover(str(out))
        else:
            if resume:
                logger.warning("%s: nothing to resume, starting from the first input", self.path)
            self.path.write_bytes(b"")
            self.failures_path.write_bytes(b"")
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._failures = open(self.failures_path, "ab")  # noqa: SIM115
        self._last_sync = time.monotonic()

    def _recover(self, run: str) -> None:
        keep_until = 0
        run_start = 0  # where the records of the current source index start
        last: dict[str, Any] | None = None
        before_run: dict[str, Any] | None = None  # the last record of the index before last's
        outputs: list[str] = []
        kept = count_before_run = 0
        for start, end, record in _read_lines(self.path):
            if record is None or not isinstance(record.get("index"), int):
                logger.warning(
                    "%s: dropping an incomplete record at byte %d (the run was cut off while "
                    "writing it)", self.path, start,
                )
                break
            if last is None or record["index"] != last["index"]:
                run_start, count_before_run, before_run = start, kept, last
            last = record
            keep_until = end
            kept += 1
            if record.get("output") and (not outputs or outputs[-1] != record["output"]):
                outputs.append(str(record["output"]))
        if last is not None and "frame" in last and "time" not in last:
            # A video's frames are written as it goes: redo the one that was cut off. A live
            # stream's records (they have a "time") are kept and it counts as done: what it
            # showed cannot be read again.
            keep_until, outputs = run_start, outputs[:-1] if last.get("output") else outputs
            self.resume_point = _resume_point(run, int(last["index"]) - 1, before_run)
            self.resumed = count_before_run
        elif last is not None:
            self.resume_point = _resume_point(run, int(last["index"]), last)
            self.resumed = kept
        with open(self.path, "r+b") as f:
            f.truncate(keep_until)
        self.reserved = outputs
        self._keep_failures(self.resume_point.done_index)

    def _keep_failures(self, done_index: int) -> None:
        """Rewrite ``failures.jsonl`` with the failures of inputs ``0..done_index`` only."""
        lines = []
        if self.failures_path.exists():
            for _, _, record in _read_lines(self.failures_path):
                if record is None:
                    break
                if int(record.get("index", -1)) <= done_index:
                    lines.append(_dump_line(record))
                    self.previous_failures.append(
                        PredictionFailure(str(record["path"]), str(record["reason"]))
                    )
        partial = self.failures_path.with_name(self.failures_path.name + ".partial")
        partial.write_bytes(b"".join(lines))
        partial.replace(self.failures_path)

    def _written(self, f: Any) -> None:
        f.flush()
        now = time.monotonic()
        if now - self._last_sync >= self.sync_seconds:
            os.fsync(self._file.fileno())
            os.fsync(self._failures.fileno())
            self._last_sync = now

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records``, one line each, in one write."""
        if records:
            self._file.write(b"".join(_dump_line(r) for r in records))
            self._written(self._file)

    def fail(self, index: int, path: Path | str, reason: str) -> None:
        """Append the failure of input ``index``."""
        self._failures.write(_dump_line({"index": index, "path": str(path), "reason": reason}))
        self._written(self._failures)

    def close(self) -> None:
        """Flush, fsync and close both files."""
        for f in (self._file, self._failures):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def write_coco(records_dir: Path, path: Path) -> None:
    """``predictions.json`` (COCO results, ``bbox`` as ``[x, y, w, h]``) from the JSON Lines.

    ``image_id`` counts the records (images and frames) from 1 in the order written, or is
    the number in each file name when every record is a still image named by a number
    (COCO's own image ids). Written record by record, so memory does not grow with the run;
    a write that fails leaves no half-written file behind.
    """
    numbered = any(True for _ in read_records(records_dir)) and all(
        "frame" not in r and Path(r["file_name"]).stem.isdigit() for r in read_records(records_dir)
    )
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write("[")
            first = True
            for number, record in enumerate(read_records(records_dir), start=1):
                image_id = int(Path(record["file_name"]).stem) if numbered else number
                for det in record["detections"]:
                    if not first:
                        f.write(",")
                    json.dump(_coco_entry(image_id, record, det), f)
                    first = False
            f.write("]")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


def _coco_entry(image_id: int, record: Mapping[str, Any], det: Mapping[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = det["box"]
    entry: dict[str, Any] = {
        "image_id": image_id,
        "file_name": record["file_name"],
        "category_id": det["category_id"],
        "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
        "score": det["score"],
    }
    if "category" in det:
        entry["category"] = det["category"]
    if "frame" in record:
        entry["frame"] = record["frame"]
    return entry
