"""The job behind ``efficientdet predict``: a pipeline from input paths to pictures and records.

::

    patterns --sources.py--> inputs  (walk, glob; numbered, hashed in order; resume skip, shard)
             --reader.py---> decoded (thread pool, at most 2 batches ahead, in input order:
                                      decode + letterbox, or the failure's reason)
             --predictor---> detections per image, in its pixels (one batch per call)
             --tracking----> track ids and counts per sequence (with ``tracking``)
             --sinks-------> records.py   predictions.jsonl, failures.jsonl; predictions.json
                             pictures.py  annotated pictures      video.py  annotated videos
                             mot.py       MOT Challenge files (with ``mot``)

Live sources (stream URLs, camera indices) leave the reader undecoded and are predicted one
newest frame at a time by :func:`~efficientdet.inference.predict_stream.predict_stream`.

The detector comes in as ``predict_fn(images) -> predictions`` taking a list of RGB ``PIL``
images and returning, per image, a dict with ``boxes`` (``Tensor[K,4]`` xyxy in that image's
pixels), ``scores`` (``Tensor[K]``) and ``labels`` (``Tensor[K]`` int64, 0..C-1). Nothing here
knows about models, so tests pass a fake one. A
:class:`~efficientdet.inference.predictor.LetterboxPredictor` (what
:func:`~efficientdet.deploy.backends.build_predictor` gives for a plain detector) is fed its
letterboxed batches directly, so the letterbox runs in the reader threads too; any other
``predict_fn`` (tiling, test-time augmentation) gets the decoded images.

Outputs in ``out_dir``:

* one annotated picture per input image (unless ``pictures=False``), same stem, ``.png`` for
  lossless inputs (PNG, BMP, GIF, TIFF, PNM) and ``.jpg`` otherwise; a second input with the
  same stem gets ``_1``, ``_2``, ... appended;
* one annotated H.264 ``.mp4`` per input video (needs PyAV, ``pip install av``; not with
  ``pictures=False``);
* ``predictions.jsonl``, written as the run goes: one line per image (or video frame), those
  without detections included, flushed after every batch and fsync'd every few seconds;
* ``failures.jsonl``: one line per input that could not be read;
* ``predictions.json`` at the end, in the COCO results format, every detection
  ``predict_fn`` returned (not only those drawn), built from ``predictions.jsonl``.

Sources are consumed lazily (:func:`iter_sources`), in a deterministic order, so a run over
a million files starts at once; ``shard=(i, n)`` keeps every ``n``-th of them and
``resume=True`` continues a run that was killed, from its ``predictions.jsonl``, after
checking that the inputs up to there are the same, in the same order (their digest).

Unreadable inputs are logged, skipped and listed in the returned report; the rest go on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .live import LiveOptions
from .mot import write_mot
from .predict_stream import predict_stream
from .prediction_run import PredictionReport, PredictionRun, open_run
from .predictor import LetterboxPredictor, PredictFn
from .reader import Decoded, ImageLoader, ReadAhead, default_workers
from .records import (
    FAILURES_FILE,
    PREDICTIONS_FILE,
    RECORDS_FILE,
    LabelMap,
    PredictionFailure,
    RecordLog,
    detection_records,
    read_records,
    write_coco,
)
from .sources import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Input,
    collect_sources,
    is_video,
    iter_sources,
    numbered_sources,
    parse_shard,
    select_inputs,
)
from .track_session import TrackingConfig, image_sequence
from .video import VideoFrames, VideoWriter, frame_rate, import_av
from .visualize import ClassNames

__all__ = [
    "FAILURES_FILE",
    "IMAGE_EXTENSIONS",
    "PREDICTIONS_FILE",
    "RECORDS_FILE",
    "VIDEO_EXTENSIONS",
    "LetterboxPredictor",
    "PredictFn",
    "PredictionFailure",
    "PredictionReport",
    "collect_sources",
    "detection_records",
    "is_video",
    "iter_sources",
    "numbered_sources",
    "parse_shard",
    "read_records",
    "run_prediction",
]

logger = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # batches the reader decodes ahead of the network, at most


def _predict_images(run: PredictionRun, batch: list[Decoded]) -> None:
    """Predict, track (when asked), draw and record one batch of still images; the records
    go out in one write, after the pictures. With tracking, the images of one folder are the
    frames of one sequence, in input order."""
    if not batch:
        return
    records = []
    for item, detection in zip(batch, run.detect(batch), strict=True):
        detection, counts = run.track(detection, image_sequence(item.input.name))
        output = run.save_picture(item, detection, counts)
        extra = {"counts": counts} if counts is not None else None
        records.append(run.record(item.input, item.size, output, detection, extra=extra))
        run.report.images += 1
    run.log.write(records)
    batch.clear()


def _predict_frames(
    run: PredictionRun, item: Input, frames: VideoFrames, writer: VideoWriter | None,
    output: str | None, rate: float, bar: tqdm,
) -> int:
    """Predict, track (when asked), record and (with a writer) encode every frame; returns
    how many were done. Frames decoded before a decoding error are still predicted, recorded
    and written."""
    done = 0
    batch: list[Image.Image] = []
    sequence = f"video:{item.index}"

    def flush() -> None:
        nonlocal done
        records = []
        for image, detection in zip(batch, run.detect_images(batch), strict=True):
            detection, counts = run.track(detection, sequence, rate)
            if writer is not None and run.pictures is not None:
                writer.write(run.annotate(image, detection, counts))
            extra = {"counts": counts} if counts is not None else None
            records.append(
                run.record(item, image.size, output, detection, frame=done, extra=extra)
            )
            done += 1
        run.log.write(records)
        bar.update(len(batch))
        batch.clear()

    for image in frames:
        batch.append(image)
        if len(batch) >= run.batch_size:
            flush()
    if batch:
        flush()
    return done


def _predict_video(run: PredictionRun, item: Input) -> None:
    """Predict every frame of the video ``item`` and (with pictures) write ``<stem>.mp4``."""
    index, path = item.index, item.path
    if not path.is_file():
        run.fail(index, path, "no such file" if not path.exists() else "is not a file")
        return
    try:
        av = import_av()
    except ImportError as e:
        run.fail(index, path, str(e))
        return
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        run.fail(index, path, f"not a readable video ({e})")
        return
    with container:
        if not container.streams.video:
            run.fail(index, path, "has no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        listed_frames = stream.frames  # from the container's index; 0 where unknown
        out_path = run.pictures.path_for(path, ".mp4") if run.pictures is not None else None
        writer = None
        rate = frame_rate(stream)
        try:
            writer = VideoWriter(av, out_path, rate) if out_path is not None else None
        except (av.FFmpegError, OSError) as e:
            run.fail(index, path, f"could not create {out_path} ({e})")
            return
        frames = VideoFrames(av, container, stream)
        try:
            with tqdm(
                total=listed_frames or None, desc=path.name, unit="frame", leave=False,
                disable=not run.show_progress,
            ) as bar:
                done = _predict_frames(
                    run, item, frames, writer, out_path.name if out_path is not None else None,
                    float(rate), bar,
                )
        finally:
            if writer is not None:
                writer.close()
    _report_video(run, item, done, listed_frames, frames.error, out_path)


def _report_video(
    run: PredictionRun, item: Input, done: int, listed: int, error: str | None, out_path: Path | None
) -> None:
    """Count a predicted video, or fail it; a video with no frame leaves no file."""
    run.report.frames += done
    if error is None and 0 < done < listed:
        # FFmpeg stops quietly at the end of a cut file. Container frame counts can be
        # slightly off for valid files, so this is a warning, not a failure.
        logger.warning(
            "%s: decoded %d of the %d frames its container lists; the file may be truncated",
            item.path, done, listed,
        )
    if error is not None:
        where = f" after {done} frames" if done else ""
        run.fail(item.index, item.path, f"video decoding failed{where} ({error})")
    if done == 0:
        if out_path is not None:
            out_path.unlink(missing_ok=True)
        if error is None:
            run.fail(item.index, item.path, "has no video frames")
        return
    run.report.videos += 1
    if out_path is not None:
        run.report.outputs.append(out_path)


def _check_options(batch_size: int, shard: tuple[int, int] | None, workers: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def _output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: the output folder exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _loader(predict_fn: PredictFn, pictures: bool) -> ImageLoader:
    """Decode, and letterbox for a :class:`LetterboxPredictor` (then the image is kept only
    to draw on)."""
    if isinstance(predict_fn, LetterboxPredictor):
        spec = (predict_fn.image_size, predict_fn.mean, predict_fn.std)
        return ImageLoader(spec, keep_image=pictures)
    return ImageLoader(None)


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
    pictures: bool = True,
    workers: int | None = None,
    tracking: TrackingConfig | None = None,
    live: LiveOptions | None = None,
    mot: str | Path | None = None,
) -> PredictionReport:
    """Predict every source, write annotated pictures/videos, ``predictions.jsonl`` as it
    goes and ``predictions.json`` at the end (the pipeline in the module docstring).

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]``, one dict per
            image with ``boxes`` ``Tensor[K,4]`` xyxy in that image's pixels, ``scores``
            ``Tensor[K]`` and ``labels`` ``Tensor[K]`` int64, called with at most
            ``batch_size`` upright RGB images; a :class:`LetterboxPredictor` is given its
            letterboxed batches (``Tensor[B, 3, H, W]``) instead.
        sources: image and video paths, any iterable (:func:`iter_sources` gives them
            lazily), consumed as the reader has room. Videos are recognised by extension.
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
        resume: continue the run in ``out_dir``: the sources (the same, in the same order:
            checked by their digest up to the last complete record) up to that record are
            skipped, the rest are predicted and appended. Without it an existing
            ``predictions.jsonl`` is started afresh.
        shard: ``(i, n)``: only the sources whose position in the input order is ``i``
            modulo ``n``; the ``n`` shards together are the whole run, each source in one.
        sync_seconds: fsync the JSON Lines files at most this often (they are flushed to the
            operating system after every batch anyway).
        pictures: write the annotated pictures and videos; without them only the records
            (``output`` is None in each).
        workers: reader threads decoding ahead of the network (default: the CPUs, at most
            4); besides the batch being gathered, at most ``2 * batch_size`` images are
            decoded (or being decoded) and not yet taken.
        tracking: track through each video, stream and folder of frames (records gain
            ``track_id``, pictures show tracks and trails; lines and zones are counted).
        live: how live sources are read (duration, timeouts, reconnection); Ctrl-C while
            a stream is read ends the stream and the run, with the files complete.
        mot: with ``tracking``, the MOT Challenge file (``.txt``) or folder to write at the
            end (:func:`~efficientdet.inference.mot.write_mot`).

    Returns:
        A :class:`PredictionReport`. ``predictions.json`` records are
        ``{"image_id", "file_name", "category_id", "category", "bbox": [x, y, w, h],
        "score"}`` with ``file_name`` the source path as given, ``category`` the class name
        (when ``class_names`` is given) and, for videos, ``"frame"`` (0-based) and one
        ``image_id`` per frame. ``image_id`` counts the images and frames written from 1 in
        input order, except when every one is an image named by a number (COCO's
        ``000000397133.jpg``): then it is that number, so the file goes straight into
        pycocotools against the dataset's annotations. ``predictions.jsonl`` is described in
        :func:`read_records`. Live streams are read in their own thread (frames the detector
        has no time for are dropped) and predicted one frame at a time.

    Raises:
        ValueError: ``predict_fn`` returned something malformed, a label has no category
            id, or a resumed run's inputs are not those of the first run (the message says
            which input or which part of the order changed). Errors raised by
            ``predict_fn`` itself propagate unchanged; what was written before stays.
    """
    _check_options(batch_size, shard, workers)
    if mot is not None and tracking is None:
        raise ValueError("mot needs tracking: the MOT format holds track ids")
    out = _output_folder(out_dir)
    show = progress and sys.stderr.isatty()
    log = RecordLog(out, resume=resume, sync_seconds=sync_seconds)
    run = open_run(
        predict_fn, out, log, class_names=class_names, label_to_category_id=label_to_category_id,
        score_threshold=score_threshold, batch_size=batch_size, show_progress=show,
        pictures=pictures, tracking=tracking,
    )
    inputs = select_inputs(sources, shard=shard, resume=log.resume_point)
    try:
        _predict_inputs(run, inputs, workers, live or LiveOptions())
    finally:
        log.close()
    run.report.predictions_path = out / PREDICTIONS_FILE
    write_coco(out, run.report.predictions_path)
    if mot is not None:
        run.report.mot_paths = write_mot(out, mot)
    return run.report


def _predict_inputs(
    run: PredictionRun, inputs: Iterable[Input], workers: int | None, live: LiveOptions
) -> None:
    """The pipeline's loop: decode ahead, batch still images, predict videos and streams in
    their place in the input order; a Ctrl-C that ends a live stream ends the loop."""
    batch_size = run.batch_size
    window = PREFETCH_BATCHES * batch_size
    threads = min(workers or default_workers(), window)
    pending: list[Decoded] = []
    loader = _loader(run.predict_fn, run.pictures is not None)
    with ReadAhead(loader, workers=threads, window=window) as reader:
        items = reader.map(inputs)
        for item in tqdm(items, desc="predict", unit="file", disable=not run.show_progress):
            if item.is_stream or item.is_video:
                _predict_images(run, pending)  # keeps records in input order
                if item.is_stream:
                    predict_stream(run, item.input, live)
                else:
                    _predict_video(run, item.input)
                if run.report.interrupted:
                    break
            elif item.error is not None:
                run.fail(item.input.index, item.input.path, item.error)
            else:
                pending.append(item)
                if len(pending) >= batch_size:
                    _predict_images(run, pending)
        _predict_images(run, pending)
