"""The job behind ``efficientdet predict``: find inputs, run a detector, write pictures and JSON.

The detector comes in as a plain function ``predict_fn(images) -> predictions`` taking a
list of RGB ``PIL`` images and returning, per image, a dict with ``boxes`` (``Tensor[K,4]``
xyxy in that image's pixels), ``scores`` (``Tensor[K]``) and ``labels`` (``Tensor[K]``
int64, 0..C-1). Nothing here knows about models, so tests pass a fake one.

Outputs in ``out_dir``:

* one annotated picture per input image, same stem, ``.png`` for lossless inputs (PNG,
  BMP, GIF, TIFF, PNM) and ``.jpg`` otherwise; a second input with the same stem gets
  ``_1``, ``_2``, ... appended;
* one annotated H.264 ``.mp4`` per input video (needs PyAV, ``pip install av``);
* ``predictions.jsonl``, written as the run goes: one line per image (or video frame), those
  without detections included, flushed after every batch and fsync'd every few seconds;
* ``failures.jsonl``: one line per input that could not be read;
* ``predictions.json`` at the end, in the COCO results format, every detection
  ``predict_fn`` returned (not only those drawn), built from ``predictions.jsonl``.

Sources are consumed lazily (:func:`iter_sources`), in a deterministic order, so a run over
a million files starts at once; ``shard=(i, n)`` keeps every ``n``-th of them and
``resume=True`` continues a run that was killed, from its ``predictions.jsonl``.

Unreadable inputs are logged, skipped and listed in the returned report; the rest go on.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from ..detection.transform import ImageReadError, load_image
from .visualize import ClassNames, draw_detections

__all__ = [
    "FAILURES_FILE",
    "IMAGE_EXTENSIONS",
    "PREDICTIONS_FILE",
    "RECORDS_FILE",
    "VIDEO_EXTENSIONS",
    "PredictFn",
    "PredictionFailure",
    "PredictionReport",
    "collect_sources",
    "detection_records",
    "is_video",
    "iter_sources",
    "parse_shard",
    "read_records",
    "run_prediction",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
_LOSSLESS_EXTENSIONS = frozenset(
    {".png", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
PREDICTIONS_FILE = "predictions.json"
RECORDS_FILE = "predictions.jsonl"
FAILURES_FILE = "failures.jsonl"
_JPEG_QUALITY = 90
_DEFAULT_FRAME_RATE = Fraction(25)

PredictFn = Callable[[list[Image.Image]], Sequence[Mapping[str, torch.Tensor]]]
LabelMap = Mapping[int, int] | Sequence[int]


@dataclass
class PredictionFailure:
    """An input that was skipped (or a video cut short) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class PredictionReport:
    """What :func:`run_prediction` did.

    Attributes:
        images: still images predicted and written.
        videos: videos predicted and written (a video cut short by a decoding error counts
            here and in ``failures``).
        frames: video frames predicted, over all videos.
        detections: detections written to the JSON file, over images and frames.
        failures: inputs skipped or cut short, each with its reason.
        outputs: files written, annotated pictures and videos, in input order.
        predictions_path: the COCO results JSON file.
        resumed: records (images and frames) an earlier run had written, with ``resume``;
            the counts above are this call's, ``failures`` includes the earlier run's.
    """

    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failures: list[PredictionFailure] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    predictions_path: Path | None = None
    resumed: int = 0

    @property
    def ok(self) -> bool:
        """True when every input was read completely."""
        return not self.failures

    def summary(self) -> str:
        """One line for the command line: counts, then failures."""
        text = (
            f"{self.images} images, {self.videos} videos ({self.frames} frames), "
            f"{self.detections} detections, {len(self.failures)} failures"
        )
        if self.resumed:
            text += f" (resumed after {self.resumed} records)"
        if self.predictions_path is not None:
            text += f"; results in {self.predictions_path}"
        return text


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is treated as a video (by extension: .mp4 .avi .mov .mkv .webm)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def _folder_media(folder: Path) -> Iterator[Path]:
    """Image and video files directly inside ``folder``, sorted by name, hidden ones skipped.

    Only the folder's media names are held (sorting needs them); paths are made one by one.
    """
    with os.scandir(folder) as entries:
        names = sorted(
            entry.name for entry in entries
            if not entry.name.startswith(".") and _is_media(Path(entry.name)) and entry.is_file()
        )
    for name in names:
        yield folder / name


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _sorted_children(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entry.name for entry in entries)
    except OSError:  # unreadable or vanished: matches nothing, as glob does
        return []


def _walk_glob(base: Path, parts: Sequence[str]) -> Iterator[Path]:
    """Paths under ``base`` matching the pattern ``parts`` (one per path segment; ``**``: any
    number of folders), folder by folder in sorted name order. Like :mod:`glob`, wildcards do
    not match names starting with a dot unless the pattern segment does."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _walk_glob(base, rest)
        for name in _sorted_children(base):
            child = base / name
            if not name.startswith(".") and child.is_dir():
                yield from _walk_glob(child, parts)
        return
    if not _has_glob(head):
        child = base / head
        if child.exists() or child.is_symlink():
            yield from _walk_glob(child, rest)
        return
    for name in _sorted_children(base):
        if name.startswith(".") and not head.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, head):
            yield from _walk_glob(base / name, rest)


def _iter_glob(text: str) -> Iterator[Path]:
    """Lazy, sorted-per-folder expansion of a glob pattern (``**`` recurses)."""
    path = Path(text)
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if _has_glob(part))
    base = Path(*parts[:first]) if first else Path(".")
    yield from _walk_glob(base, parts[first:])  # Path(".") / "a.png" is Path("a.png")


def iter_sources(patterns: Iterable[str | Path]) -> Iterator[Path]:
    """Expand command-line inputs into the files to predict, lazily, in order, without
    duplicates.

    Each pattern is one of:

    * a file: kept whatever its extension (reading decides whether it is an image);
    * a folder: its image and video files, not recursing into sub-folders, sorted by name;
    * a glob (``*``, ``?``, ``[...]``; ``**`` recurses): matching image and video files,
      each folder's entries in sorted name order; matching folders expanded as above.

    Nothing is listed ahead: the first file comes out as soon as its folder is read, so a
    million inputs start at once (a folder's media names are held while it is read; the paths
    already given are remembered to drop duplicates). The order depends only on the patterns
    and the files on disk, so two runs, or the shards of one, see the same sequence.

    A path that does not exist, or a glob that matches nothing, is logged and kept as given,
    so :func:`run_prediction` reports it as a failure ("no such file") while the other inputs
    still run. A folder without images is logged and adds nothing.

    Args:
        patterns: paths, folders and glob patterns as typed by the user.

    Yields:
        Paths of the files, in the order of the patterns.
    """
    seen: set[str] = set()

    def fresh(path: Path) -> bool:
        key = os.path.realpath(path) if path.exists() else str(path)
        if key in seen:
            return False
        seen.add(key)
        return True

    for pattern in patterns:
        text = os.path.expanduser(str(pattern))
        path = Path(text)
        if path.is_dir():
            empty = True
            for f in _folder_media(path):
                empty = False
                if fresh(f):
                    yield f
            if empty:
                logger.warning("%s: folder has no image or video files", pattern)
        elif path.exists():
            if fresh(path):
                yield path
        elif _has_glob(text):
            empty = True
            for match in _iter_glob(text):
                if match.is_dir():
                    files: Iterable[Path] = _folder_media(match)
                elif match.is_file() and _is_media(match):
                    files = (match,)
                else:
                    continue
                for f in files:
                    empty = False
                    if fresh(f):
                        yield f
            if empty:
                logger.warning("%s: pattern matches no image or video files", pattern)
                if fresh(path):
                    yield path
        else:
            logger.warning("%s: no such file or folder", pattern)
            if fresh(path):
                yield path


def collect_sources(patterns: Sequence[str | Path]) -> list[Path]:
    """:func:`iter_sources` as a list (for callers that want the whole set up front)."""
    return list(iter_sources(patterns))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``; anything else raises ``ValueError``."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard {text!r}: expected I/N, e.g. 0/4") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


class _OutputNames:
    """Hands out file names in the output folder, never the same one twice."""

    def __init__(self, reserved: Sequence[str]) -> None:
        self._used = {name.lower() for name in reserved}

    def claim(self, stem: str, suffix: str) -> str:
        name = f"{stem}{suffix}"
        index = 0
        while name.lower() in self._used:
            index += 1
            name = f"{stem}_{index}{suffix}"
        self._used.add(name.lower())
        return name


def _check_prediction(
    prediction: Mapping[str, Any], index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``boxes [K,4]`` float, ``scores [K]`` float and ``labels [K]`` int64, on the CPU."""
    try:
        boxes = torch.as_tensor(prediction["boxes"]).detach().cpu().float()
        scores = torch.as_tensor(prediction["scores"]).detach().cpu().float()
        labels = torch.as_tensor(prediction["labels"]).detach().cpu().long()
    except KeyError as e:
        raise ValueError(
            f"predict_fn result {index} lacks {e}; expected a dict with boxes, scores, labels"
        ) from e
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"predict_fn result {index}: boxes must be [K, 4] xyxy, got {tuple(boxes.shape)}"
        )
    k = boxes.shape[0]
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    if len(scores) != k or len(labels) != k:
        raise ValueError(
            f"predict_fn result {index}: {k} boxes but {len(scores)} scores and "
            f"{len(labels)} labels"
        )
    return boxes, scores, labels


def _predict(
    predict_fn: PredictFn, images: list[Image.Image]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    predictions = list(predict_fn(images))
    if len(predictions) != len(images):
        raise ValueError(
            f"predict_fn returned {len(predictions)} results for {len(images)} images"
        )
    return [_check_prediction(p, i) for i, p in enumerate(predictions)]


def numbered_sources(sources: Sequence[str | Path]) -> bool:
    """Whether every source is an image whose file name is a number (COCO's
    ``000000397133.jpg``): then that number is its ``image_id`` in ``predictions.json``."""
    paths = [Path(s) for s in sources]
    return bool(paths) and all(p.stem.isdigit() and not is_video(p) for p in paths)


class _Labels:
    """Label 0..C-1 -> (category id, class name or None)."""

    def __init__(self, label_to_category_id: LabelMap | None, class_names: ClassNames | None):
        self._label_map = label_to_category_id
        self._names = class_names

    def category(self, label: int) -> int:
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

    def detections(
        self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
    ) -> list[dict[str, Any]]:
        """``boxes [K,4]`` xyxy, ``scores [K]``, ``labels [K]`` -> JSON-ready dicts."""
        found = []
        for (x1, y1, x2, y2), score, label in zip(
            boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            item: dict[str, Any] = {
                "box": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)],
                "score": round(float(score), 5),
                "label": int(label),
                "category_id": self.category(int(label)),
            }
            if self._names is not None:
                item["category"] = self._names[int(label)]
            found.append(item)
        return found


def detection_records(
    prediction: Mapping[str, torch.Tensor],
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
    boxes, scores, labels = _check_prediction(prediction, 0)
    return _Labels(label_to_category_id, class_names).detections(boxes, scores, labels)


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

    A record is ``{"index", "file_name", "width", "height", "output", "detections"}`` (plus
    ``"frame"`` for a video frame): ``index`` is the source's position in the run's input
    order (shards and resumed runs keep it), ``output`` the annotated picture's name in
    ``out_dir`` (None if it could not be written), and each detection is ``{"box": [x1, y1,
    x2, y2]`` in the image's pixels, ``"score"``, ``"label"`` (0..C-1), ``"category_id"``,
    ``"category"`` (the class name, when known)``}``. A torn last line (a run killed while
    writing it) is not a record and is skipped.
    """
    path = Path(out_dir) / RECORDS_FILE
    for _, _, record in _read_lines(path):
        if record is None:
            return
        yield record


def _dump_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class _RecordLog:
    """``predictions.jsonl`` and ``failures.jsonl``: appended a batch at a time, flushed after
    each batch (a killed process loses nothing the kernel has), fsync'd every
    ``sync_seconds`` (a crashed machine loses at most that much).

    With ``resume``, the files of an earlier run are read back first: a torn last line is cut
    off, a video whose frames were being written is cut off to be done again, and
    ``done_index`` is the last source index whose result is complete.
    """

    def __init__(self, out: Path, *, resume: bool, sync_seconds: float) -> None:
        self.path = out / RECORDS_FILE
        self.failures_path = out / FAILURES_FILE
        self.sync_seconds = sync_seconds
        self.done_index = -1
        self.done_file: str | None = None
        self.reserved: list[str] = []
        self.resumed = 0
        self.previous_failures: list[PredictionFailure] = []
        if resume and self.path.exists():
            self._recover()
        else:
            if resume:
                logger.warning("%s: nothing to resume, starting from the first input", self.path)
            self.path.write_bytes(b"")
            self.failures_path.write_bytes(b"")
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._failures = open(self.failures_path, "ab")  # noqa: SIM115
        self._last_sync = time.monotonic()

    def _recover(self) -> None:
        keep_until = 0
        run_start = 0  # where the records of the current source index start
        last: dict[str, Any] | None = None
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
                run_start, count_before_run = start, kept
            last = record
            keep_until = end
            kept += 1
            if record.get("output") and (not outputs or outputs[-1] != record["output"]):
                outputs.append(str(record["output"]))
        if last is not None and "frame" in last:
            # A video's frames are written as it goes: redo the one that was cut off.
            keep_until, outputs = run_start, outputs[:-1] if last.get("output") else outputs
            self.done_index = int(last["index"]) - 1
            self.resumed = count_before_run
        elif last is not None:
            self.done_index = int(last["index"])
            self.done_file = str(last["file_name"])
            self.resumed = kept
        with open(self.path, "r+b") as f:
            f.truncate(keep_until)
        self.reserved = outputs
        lines = []
        if self.failures_path.exists():
            for _, _, record in _read_lines(self.failures_path):
                if record is None:
                    break
                if int(record.get("index", -1)) <= self.done_index:
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

    def fail(self, index: int, path: Path, reason: str) -> None:
        self._failures.write(_dump_line({"index": index, "path": str(path), "reason": reason}))
        self._written(self._failures)

    def close(self) -> None:
        for f in (self._file, self._failures):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def _write_coco(records_dir: Path, path: Path) -> None:
    """``predictions.json`` (COCO results, ``bbox`` as ``[x, y, w, h]``) from the JSON Lines.

    ``image_id`` counts the records (images and frames) from 1 in the order written, or is
    the number in each file name when every record is a still image named by a number
    (COCO's own image ids). Written record by record, so memory does not grow with the run.
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
                    if not first:
                        f.write(",")
                    json.dump(entry, f)
                    first = False
            f.write("]")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


@dataclass
class _Job:
    """What every input shares during one :func:`run_prediction` call."""

    predict_fn: PredictFn
    out_dir: Path
    class_names: ClassNames | None
    score_threshold: float
    batch_size: int
    show_progress: bool
    labels: _Labels
    log: _RecordLog
    names: _OutputNames
    report: PredictionReport

    def fail(self, index: int, path: Path, reason: str) -> None:
        self.report.failures.append(PredictionFailure(str(path), reason))
        self.log.fail(index, path, reason)
        logger.warning("%s: %s", path, reason)

    def annotate(
        self, image: Image.Image, prediction: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> Image.Image:
        boxes, scores, labels = prediction
        return draw_detections(
            image, boxes, scores, labels, self.class_names, self.score_threshold
        )

    def record(
        self,
        index: int,
        file_name: str,
        image: Image.Image,
        output: str | None,
        prediction: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        frame: int | None = None,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "index": index, "file_name": file_name, "width": image.width, "height": image.height,
        }
        if frame is not None:
            record["frame"] = frame
        record["output"] = output
        record["detections"] = self.labels.detections(*prediction)
        self.report.detections += len(prediction[0])
        return record


def _image_suffix(path: Path) -> str:
    return ".png" if path.suffix.lower() in _LOSSLESS_EXTENSIONS else ".jpg"


def _predict_images(job: _Job, batch: list[tuple[int, Path, Image.Image]]) -> None:
    """Predict, draw and record one batch of still images; the records go out in one write,
    after the pictures."""
    if not batch:
        return
    predictions = _predict(job.predict_fn, [image for _, _, image in batch])
    records = []
    for (index, path, image), prediction in zip(batch, predictions, strict=True):
        name: str | None = job.names.claim(path.stem, _image_suffix(path))
        out_path = job.out_dir / str(name)
        try:
            job.annotate(image, prediction).save(out_path, quality=_JPEG_QUALITY)
            job.report.outputs.append(out_path)
        except OSError as e:
            job.fail(index, path, f"could not write {out_path} ({e})")
            name = None
        records.append(job.record(index, path.as_posix(), image, name, prediction))
        job.report.images += 1
    job.log.write(records)
    batch.clear()


def _import_av() -> Any:
    try:
        import av
    except ImportError as e:
        raise ImportError(
            "reading and writing video needs PyAV, which is not installed: pip install av"
        ) from e
    return av


def _upright(frame: Any) -> Image.Image:
    """Decoded PyAV frame -> RGB image turned as its display matrix says."""
    image = frame.to_image()
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    transposes = {
        90: Image.Transpose.ROTATE_90,
        180: Image.Transpose.ROTATE_180,
        270: Image.Transpose.ROTATE_270,
    }
    if rotation in transposes:
        image = image.transpose(transposes[rotation])
    elif rotation:
        image = image.rotate(rotation, expand=True)
    return image


def _even_size(image: Image.Image) -> Image.Image:
    """Pad to even width and height on the right/bottom; H.264 in yuv420p needs them."""
    width, height = image.width + image.width % 2, image.height + image.height % 2
    if (width, height) == image.size:
        return image
    padded = Image.new("RGB", (width, height))
    padded.paste(image, (0, 0))
    return padded


class _VideoWriter:
    """Encodes RGB frames to H.264 (MPEG-4 Part 2 where libx264 is missing) in an .mp4."""

    def __init__(self, av: Any, path: Path, rate: Fraction) -> None:
        self._av = av
        self._container = av.open(str(path), "w")
        self._rate = rate
        self._stream: Any = None
        self._index = 0

    def write(self, image: Image.Image) -> None:
        image = _even_size(image)
        if self._stream is None:
            codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=self._rate)
            self._stream.width, self._stream.height = image.size
            self._stream.pix_fmt = "yuv420p"
        elif image.size != (self._stream.width, self._stream.height):
            image = image.resize((self._stream.width, self._stream.height))
        frame = self._av.VideoFrame.from_image(image)
        frame.pts = self._index
        frame.time_base = 1 / self._rate
        self._index += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()


def _frame_rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        return _DEFAULT_FRAME_RATE
    return Fraction(rate).limit_denominator(1001)


def _predict_frames(
    job: _Job,
    index: int,
    output: str,
    av: Any,
    container: Any,
    stream: Any,
    writer: _VideoWriter,
    file_name: str,
    bar: tqdm,
) -> tuple[int, str | None]:
    """Decode, predict, record and encode every frame of ``stream``.

    Returns:
        How many frames were done and the decoding error that stopped early, if any. Frames
        decoded before such an error are still predicted, recorded and written.
    """
    done = 0
    batch: list[Image.Image] = []

    def flush() -> None:
        nonlocal done
        records = []
        for image, prediction in zip(batch, _predict(job.predict_fn, batch), strict=True):
            writer.write(job.annotate(image, prediction))
            records.append(job.record(index, file_name, image, output, prediction, frame=done))
            done += 1
        job.log.write(records)
        bar.update(len(batch))
        batch.clear()

    error = None
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except (av.FFmpegError, OSError) as e:
            error = str(e)
            break
        batch.append(_upright(frame))
        if len(batch) >= job.batch_size:
            flush()
    if batch:
        flush()
    return done, error


def _predict_video(job: _Job, index: int, path: Path) -> None:
    """Predict every frame of the video at ``path`` and write ``<stem>.mp4``."""
    if not path.is_file():
        job.fail(index, path, "no such file" if not path.exists() else "is not a file")
        return
    try:
        av = _import_av()
    except ImportError as e:
        job.fail(index, path, str(e))
        return
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        job.fail(index, path, f"not a readable video ({e})")
        return
    with container:
        if not container.streams.video:
            job.fail(index, path, "has no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        listed_frames = stream.frames  # from the container's index; 0 where unknown
        out_path = job.out_dir / job.names.claim(path.stem, ".mp4")
        try:
            writer = _VideoWriter(av, out_path, _frame_rate(stream))
        except (av.FFmpegError, OSError) as e:
            job.fail(index, path, f"could not create {out_path} ({e})")
            return
        try:
            with tqdm(
                total=listed_frames or None, desc=path.name, unit="frame", leave=False,
                disable=not job.show_progress,
            ) as bar:
                frames, error = _predict_frames(
                    job, index, out_path.name, av, container, stream, writer, path.as_posix(), bar
                )
        finally:
            writer.close()

    job.report.frames += frames
    if error is None and 0 < frames < listed_frames:
        # FFmpeg stops quietly at the end of a cut file. Container frame counts can be
        # slightly off for valid files, so this is a warning, not a failure.
        logger.warning(
            "%s: decoded %d of the %d frames its container lists; the file may be truncated",
            path, frames, listed_frames,
        )
    if error is not None:
        where = f" after {frames} frames" if frames else ""
        job.fail(index, path, f"video decoding failed{where} ({error})")
    if frames == 0:
        out_path.unlink(missing_ok=True)
        if error is None:
            job.fail(index, path, "has no video frames")
        return
    job.report.videos += 1
    job.report.outputs.append(out_path)


def run_prediction(
    predict_fn: PredictFn,
    sources: Iterable[str | Path],
    out_dir: str | Path,
    *,
    class_names: ClassNames | None = None,
    label_to_category_id: LabelMap | None = None,
    score_threshold: float = 0.3,
    batch_size: int = 4,
    progress: bool = True,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    sync_seconds: float = 5.0,
) -> PredictionReport:
    """Predict every source, write annotated pictures/videos, ``predictions.jsonl`` as it
    goes and ``predictions.json`` at the end.

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]``, one dict per
            image with ``boxes`` ``Tensor[K,4]`` xyxy in that image's pixels, ``scores``
            ``Tensor[K]`` and ``labels`` ``Tensor[K]`` int64. Called with at most
            ``batch_size`` upright RGB images at a time.
        sources: image and video paths, any iterable (:func:`iter_sources` gives them
            lazily); consumed one at a time. Videos are recognised by extension
            (:data:`VIDEO_EXTENSIONS`).
        out_dir: output folder, created if missing; a path that exists and is not a folder
            raises ``NotADirectoryError``.
        class_names: names by label, for the drawn tags and the records.
        label_to_category_id: label -> COCO ``category_id`` (mapping or sequence); without
            it ``category_id`` is the label. A label without an entry raises ``ValueError``.
        score_threshold: only detections scoring at least this are drawn; all of them go
            to the JSON files.
        batch_size: images (or video frames) per ``predict_fn`` call; the records of a batch
            are written together.
        progress: show a tqdm bar (also needs stderr to be a terminal).
        resume: continue the run in ``out_dir``: the sources (the same, in the same order)
            up to the last complete record are skipped, the rest are predicted and appended.
            Without it an existing ``predictions.jsonl`` is started afresh.
        shard: ``(i, n)``: only the sources whose position in the input order is ``i``
            modulo ``n``; the ``n`` shards together are the whole run, each source in one.
        sync_seconds: fsync the JSON Lines files at most this often (they are flushed to the
            operating system after every batch anyway).

    Returns:
        A :class:`PredictionReport`. ``predictions.json`` records are
        ``{"image_id", "file_name", "category_id", "category", "bbox": [x, y, w, h],
        "score"}`` with ``file_name`` the source path as given, ``category`` the class name
        (when ``class_names`` is given) and, for videos, ``"frame"`` (0-based) and one
        ``image_id`` per frame. ``image_id`` counts the images and frames written from 1 in
        input order, except when every one is an image named by a number (COCO's
        ``000000397133.jpg``): then it is that number, so the file goes straight into
        pycocotools against the dataset's annotations. ``predictions.jsonl`` is described in
        :func:`read_records`.

    Raises:
        ValueError: ``predict_fn`` returned something malformed, a label has no category
            id, or a resumed run's inputs are not those of the first run. Errors raised by
            ``predict_fn`` itself propagate unchanged; what was written before stays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: the output folder exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    show = progress and sys.stderr.isatty()
    log = _RecordLog(out, resume=resume, sync_seconds=sync_seconds)
    report = PredictionReport(resumed=log.resumed)
    report.failures.extend(log.previous_failures)
    job = _Job(
        predict_fn=predict_fn,
        out_dir=out,
        class_names=class_names,
        score_threshold=score_threshold,
        batch_size=batch_size,
        show_progress=show,
        labels=_Labels(label_to_category_id, class_names),
        log=log,
        names=_OutputNames([PREDICTIONS_FILE, RECORDS_FILE, FAILURES_FILE, *log.reserved]),
        report=report,
    )
    pending: list[tuple[int, Path, Image.Image]] = []
    count = 0
    try:
        for index, source in enumerate(tqdm(sources, desc="predict", unit="file", disable=not show)):
            count = index + 1
            path = Path(source)
            if index <= log.done_index:
                if index == log.done_index and log.done_file not in (None, path.as_posix()):
                    raise ValueError(
                        f"{out}: cannot resume: input {index} was {log.done_file} in the first "
                        f"run and is {path.as_posix()} now (the inputs changed)"
                    )
                continue
            if shard is not None and index % shard[1] != shard[0]:
                continue
            if is_video(path):
                _predict_images(job, pending)  # keeps records in input order
                _predict_video(job, index, path)
                continue
            try:
                image = load_image(path)
            except ImageReadError as e:
                job.fail(index, path, e.reason)
                continue
            pending.append((index, path, image))
            if len(pending) >= batch_size:
                _predict_images(job, pending)
        _predict_images(job, pending)
        if count <= log.done_index:
            raise ValueError(
                f"{out}: cannot resume: the first run wrote results for input {log.done_index} "
                f"but there are only {count} inputs now (the inputs changed)"
            )
    finally:
        log.close()

    report.predictions_path = out / PREDICTIONS_FILE
    _write_coco(out, report.predictions_path)
    return report
