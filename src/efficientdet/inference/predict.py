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
* ``predictions.json`` in the COCO results format, every detection ``predict_fn`` returned
  (not only those drawn).

Unreadable inputs are logged, skipped and listed in the returned report; the rest go on.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
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
    "IMAGE_EXTENSIONS",
    "PREDICTIONS_FILE",
    "VIDEO_EXTENSIONS",
    "PredictFn",
    "PredictionFailure",
    "PredictionReport",
    "collect_sources",
    "is_video",
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
    """

    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failures: list[PredictionFailure] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    predictions_path: Path | None = None

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
        if self.predictions_path is not None:
            text += f"; results in {self.predictions_path}"
        return text


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is treated as a video (by extension: .mp4 .avi .mov .mkv .webm)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def _folder_media(folder: Path) -> list[Path]:
    """Image and video files directly inside ``folder``, sorted by name, hidden ones skipped."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and _is_media(p) and not p.name.startswith(".")
    )


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_sources(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand command-line inputs into the files to predict, in order, without duplicates.

    Each pattern is one of:

    * a file: kept whatever its extension (reading decides whether it is an image);
    * a folder: its image and video files, not recursing into sub-folders, sorted by name;
    * a glob (``*``, ``?``, ``[...]``; ``**`` recurses): matching image and video files
      sorted by name, matching folders expanded as above.

    A path that does not exist, or a glob that matches nothing, is logged and kept in the
    list as given, so :func:`run_prediction` reports it as a failure ("no such file") while
    the other inputs still run. A folder without images is logged and adds nothing.

    Args:
        patterns: paths, folders and glob patterns as typed by the user.

    Returns:
        Paths of the files, in the order of the patterns.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve() if path.exists() else path
        if key not in seen:
            seen.add(key)
            found.append(path)

    for pattern in patterns:
        text = os.path.expanduser(str(pattern))
        path = Path(text)
        if path.is_dir():
            files = _folder_media(path)
            if not files:
                logger.warning("%s: folder has no image or video files", pattern)
            for f in files:
                add(f)
        elif path.exists():
            add(path)
        elif _has_glob(text):
            files = []
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                if match_path.is_dir():
                    files.extend(_folder_media(match_path))
                elif match_path.is_file() and _is_media(match_path):
                    files.append(match_path)
            if not files:
                logger.warning("%s: pattern matches no image or video files", pattern)
                add(path)
            for f in files:
                add(f)
        else:
            logger.warning("%s: no such file or folder", pattern)
            add(path)
    return found


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


class _Results:
    """COCO results records, ``bbox`` as ``[x, y, w, h]``; ``image_id`` sequential from 1, or
    the number in each file name (``numbered``: COCO's own image ids)."""

    def __init__(
        self,
        label_to_category_id: LabelMap | None,
        class_names: ClassNames | None = None,
        numbered: bool = False,
    ) -> None:
        self.records: list[dict[str, Any]] = []
        self._label_map = label_to_category_id
        self._names = class_names
        self._numbered = numbered
        self._next_id = 1

    def _category(self, label: int) -> int:
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

    def add(
        self,
        file_name: str,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        frame: int | None = None,
    ) -> int:
        """Record one image's detections (``boxes [K,4]`` xyxy); returns its image id."""
        image_id = int(Path(file_name).stem) if self._numbered else self._next_id
        self._next_id += 1
        for (x1, y1, x2, y2), score, label in zip(
            boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            record: dict[str, Any] = {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": self._category(int(label)),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(score), 5),
            }
            if self._names is not None:
                record["category"] = self._names[int(label)]
            if frame is not None:
                record["frame"] = frame
            self.records.append(record)
        return image_id

    def write(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(self.records, f)
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
    results: _Results
    names: _OutputNames
    report: PredictionReport

    def fail(self, path: Path, reason: str) -> None:
        self.report.failures.append(PredictionFailure(str(path), reason))
        logger.warning("%s: %s", path, reason)

    def annotate(
        self, image: Image.Image, prediction: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> Image.Image:
        boxes, scores, labels = prediction
        return draw_detections(
            image, boxes, scores, labels, self.class_names, self.score_threshold
        )


def _image_suffix(path: Path) -> str:
    return ".png" if path.suffix.lower() in _LOSSLESS_EXTENSIONS else ".jpg"


def _predict_images(job: _Job, batch: list[tuple[Path, Image.Image]]) -> None:
    """Predict, record and write one batch of still images."""
    if not batch:
        return
    predictions = _predict(job.predict_fn, [image for _, image in batch])
    for (path, image), prediction in zip(batch, predictions, strict=True):
        job.results.add(path.as_posix(), *prediction)
        job.report.images += 1
        job.report.detections += len(prediction[0])
        out_path = job.out_dir / job.names.claim(path.stem, _image_suffix(path))
        try:
            job.annotate(image, prediction).save(out_path, quality=_JPEG_QUALITY)
        except OSError as e:
            job.fail(path, f"could not write {out_path} ({e})")
            continue
        job.report.outputs.append(out_path)
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
        for image, prediction in zip(batch, _predict(job.predict_fn, batch), strict=True):
            job.results.add(file_name, *prediction, frame=done)
            job.report.detections += len(prediction[0])
            writer.write(job.annotate(image, prediction))
            done += 1
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


def _predict_video(job: _Job, path: Path) -> None:
    """Predict every frame of the video at ``path`` and write ``<stem>.mp4``."""
    if not path.is_file():
        job.fail(path, "no such file" if not path.exists() else "is not a file")
        return
    try:
        av = _import_av()
    except ImportError as e:
        job.fail(path, str(e))
        return
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        job.fail(path, f"not a readable video ({e})")
        return
    with container:
        if not container.streams.video:
            job.fail(path, "has no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        listed_frames = stream.frames  # from the container's index; 0 where unknown
        out_path = job.out_dir / job.names.claim(path.stem, ".mp4")
        try:
            writer = _VideoWriter(av, out_path, _frame_rate(stream))
        except (av.FFmpegError, OSError) as e:
            job.fail(path, f"could not create {out_path} ({e})")
            return
        try:
            with tqdm(
                total=listed_frames or None, desc=path.name, unit="frame", leave=False,
                disable=not job.show_progress,
            ) as bar:
                frames, error = _predict_frames(
                    job, av, container, stream, writer, path.as_posix(), bar
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
        job.fail(path, f"video decoding failed{where} ({error})")
    if frames == 0:
        out_path.unlink(missing_ok=True)
        if error is None:
            job.fail(path, "has no video frames")
        return
    job.report.videos += 1
    job.report.outputs.append(out_path)


def run_prediction(
    predict_fn: PredictFn,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    class_names: ClassNames | None = None,
    label_to_category_id: LabelMap | None = None,
    score_threshold: float = 0.3,
    batch_size: int = 4,
    progress: bool = True,
) -> PredictionReport:
    """Predict every source, write annotated pictures/videos and ``predictions.json``.

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]``, one dict per
            image with ``boxes`` ``Tensor[K,4]`` xyxy in that image's pixels, ``scores``
            ``Tensor[K]`` and ``labels`` ``Tensor[K]`` int64. Called with at most
            ``batch_size`` upright RGB images at a time.
        sources: image and video paths (see :func:`collect_sources`); videos are recognised
            by extension (:data:`VIDEO_EXTENSIONS`).
        out_dir: output folder, created if missing; a path that exists and is not a folder
            raises ``NotADirectoryError``.
        class_names: names by label, for the drawn tags.
        label_to_category_id: label -> COCO ``category_id`` (mapping or sequence); without
            it ``category_id`` is the label. A label without an entry raises ``ValueError``.
        score_threshold: only detections scoring at least this are drawn; all of them go
            to the JSON file.
        batch_size: images (or video frames) per ``predict_fn`` call.
        progress: show a tqdm bar (also needs stderr to be a terminal).

    Returns:
        A :class:`PredictionReport`. JSON records are
        ``{"image_id", "file_name", "category_id", "category", "bbox": [x, y, w, h],
        "score"}`` with ``file_name`` the source path as given, ``category`` the class name
        (when ``class_names`` is given) and, for videos, ``"frame"`` (0-based) and one
        ``image_id`` per frame. ``image_id`` counts read images and frames from 1 in input
        order, except when every source is an image named by a number (COCO's
        ``000000397133.jpg``): then it is that number, so the file goes straight into
        pycocotools against the dataset's annotations.

    Raises:
        ValueError: ``predict_fn`` returned something malformed, or a label has no category
            id. Errors raised by ``predict_fn`` itself propagate unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: the output folder exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    show = progress and sys.stderr.isatty()
    job = _Job(
        predict_fn=predict_fn,
        out_dir=out,
        class_names=class_names,
        score_threshold=score_threshold,
        batch_size=batch_size,
        show_progress=show,
        results=_Results(label_to_category_id, class_names, numbered_sources(sources)),
        names=_OutputNames([PREDICTIONS_FILE]),
        report=PredictionReport(),
    )
    pending: list[tuple[Path, Image.Image]] = []
    for source in tqdm(sources, desc="predict", unit="file", disable=not show):
        path = Path(source)
        if is_video(path):
            _predict_images(job, pending)  # keeps image ids in input order
            _predict_video(job, path)
            continue
        try:
            image = load_image(path)
        except ImageReadError as e:
            job.fail(path, e.reason)
            continue
        pending.append((path, image))
        if len(pending) >= batch_size:
            _predict_images(job, pending)
    _predict_images(job, pending)

    job.report.predictions_path = out / PREDICTIONS_FILE
    job.results.write(job.report.predictions_path)
    return job.report
