"""An exported detector in any runtime, with the interface of ``Detector.predict``.

A *runner* is one loaded graph: a normalised, letterboxed ``float32[B, 3, H, W]`` batch in, the
graph's outputs out, plus the file's :class:`~efficientdet.deploy.metadata.ExportMetadata`. Each
format has its own (:class:`~efficientdet.deploy.onnx_backend.OnnxRunner`,
:class:`~efficientdet.deploy.openvino_backend.OpenVinoRunner`,
:class:`~efficientdet.deploy.litert_backend.LiteRTRunner`);
:func:`efficientdet.deploy.runtimes.open_runner` picks it by the file's suffix.

:class:`ExportedDetector` does the rest the same way for every runtime: it runs a fixed-batch
graph in chunks, reads the rows of a graph with decoding and NMS inside, or decodes a raw
graph's per-level outputs with the package's own
:func:`~efficientdet.detection.postprocess.postprocess` (the PyTorch path's), and maps boxes
back to the original images. ``predict``, ``eval`` and ``serve`` all go through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ..detection.transform import ImageSource, as_sources, preprocess_batch, scale_boxes_to_original
from ..modeling.pretrained import unused_labels
from .metadata import ExportMetadata
from .onnx_format import KIND_DETECTIONS, KIND_RAW

log = logging.getLogger(__name__)

__all__ = [
    "RUNTIMES",
    "ExportedDetector",
    "Runner",
    "is_export",
    "runtime_for",
]

Detections = list[dict[str, Tensor]]

# Runtime name -> the suffix of the files it runs.
RUNTIMES = {"onnxruntime": ".onnx", "openvino": ".xml", "litert": ".tflite"}


class Runner(Protocol):
    """One loaded exported graph.

    Attributes:
        path: the file it was loaded from.
        metadata: the file's :class:`ExportMetadata`.
        runtime: a key of :data:`RUNTIMES`.
    """

    path: Path
    metadata: ExportMetadata
    runtime: str

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``batch: float32[B, 3, H, W]`` (``B`` the file's fixed batch
        size when it has one), in the export's order: ``[detections float32[B, D, 6]]``, or
        ``class_P3 .. class_P7, box_P3 .. box_P7`` as ``float32[B, A * C | A * 4, H_l, W_l]``."""
        ...


def runtime_for(path: str | Path) -> str | None:
    """The runtime that runs ``path`` by its suffix (``.onnx``, ``.xml``, ``.tflite``), else None."""
    suffix = Path(path).suffix.lower()
    return next((name for name, ext in RUNTIMES.items() if ext == suffix), None)


def is_export(path: str | Path | None) -> bool:
    """Whether ``path`` names an exported file (by suffix) rather than a checkpoint."""
    return path is not None and runtime_for(path) is not None


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``count`` inside the block, restored after it
    (``None``: left as it is)."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ExportedDetector:
    """An exported detector in its runtime, with the interface of ``Detector``.

    Args:
        runner: the loaded graph (:func:`efficientdet.deploy.runtimes.open_runner`).
        score_threshold: keep detections scoring above this. For a graph with NMS inside it
            can only raise the file's own threshold (a lower one logs a warning). Default:
            the file's (0.001 for raw graphs).
        max_detections: at most this many per image (for a graph with NMS inside, up to the
            file's own number).
        nms: ``"hard"`` or ``"soft"``: raw graphs only (a graph with NMS inside runs hard NMS).
        pre_nms_top_k, iou_threshold: raw graphs' post-processing (the PyTorch defaults).
        torch_threads: PyTorch's intra-op threads while this detector letterboxes, runs and
            post-processes (restored after each call); ``None`` leaves them as they are. One by
            default: the runtime has threads of its own, and PyTorch's, which wait spinning for
            a while after each parallel operation, took the cores from it. Measured on 2 cores,
            Lite0 end to end with 2 PyTorch threads / 1: ONNX Runtime 31 / 24 ms, OpenVINO
            int8 29 / 24 ms, LiteRT 38 / 27 ms.

    ``predict(images)`` and ``detect(batch)`` return what ``Detector.predict`` and
    ``Detector.detect`` return: per image ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K],
    "labels": Tensor[K] int64}``, best first. Labels the file's class names call ``N/A``
    (COCO's unused ids in an export of a published model) never come out.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        nms: str = "hard",
        pre_nms_top_k: int = 5000,
        iou_threshold: float = 0.5,
        torch_threads: int | None = 1,
    ) -> None:
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 (or None), got {torch_threads}")
        self.torch_threads = torch_threads
        self.runner = runner
        self.path = runner.path
        self.metadata = runner.metadata
        meta = self.metadata
        self.suppressed_labels = unused_labels(meta.class_names)
        if meta.output == KIND_DETECTIONS:
            if nms != "hard":
                raise ValueError(
                    f"--nms {nms}: {self.path} runs hard NMS inside its graph; export it with "
                    "--raw to choose the NMS at prediction time"
                )
            self._init_detections(score_threshold, max_detections)
        elif meta.output == KIND_RAW:
            self._init_raw(score_threshold, max_detections, nms, pre_nms_top_k, iou_threshold)
        else:
            raise ValueError(f"{self.path}: unknown output kind {meta.output!r} in its metadata")

    def _init_detections(self, score_threshold: float | None, max_detections: int | None) -> None:
        file_threshold = float(self.metadata.score_threshold or 0.0)
        file_max = int(self.metadata.max_detections or 0)
        if score_threshold is not None and score_threshold < file_threshold:
            log.warning(
                "%s keeps only detections scoring above %g (set at export); asked for %g",
                self.path, file_threshold, score_threshold,
            )
        if max_detections is not None and max_detections > file_max:
            log.warning(
                "%s gives at most %d detections per image (set at export); asked for %d",
                self.path, file_max, max_detections,
            )
        self.score_threshold = max(file_threshold, score_threshold or 0.0)
        self.max_detections = min(file_max, max_detections or file_max)

    def _init_raw(
        self,
        score_threshold: float | None,
        max_detections: int | None,
        nms: str,
        pre_nms_top_k: int,
        iou_threshold: float,
    ) -> None:
        from ..detection.anchors import generate_anchors
        from ..detection.postprocess import PostprocessConfig

        meta = self.metadata
        self.score_threshold = 0.001 if score_threshold is None else float(score_threshold)
        self.max_detections = 100 if max_detections is None else int(max_detections)
        self.postprocess_config = PostprocessConfig(
            score_threshold=self.score_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=self.max_detections, nms=nms, iou_threshold=iou_threshold,
            suppressed_labels=tuple(self.suppressed_labels),
        )
        self.anchors = generate_anchors(
            meta.image_size, meta.levels[0], meta.levels[-1], meta.anchor_config()
        )

    @property
    def image_size(self) -> tuple[int, int]:
        return self.metadata.image_size

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata.class_names

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``batch: float32[B, 3, H, W]`` (see :meth:`Runner.__call__`).

        A file exported with a fixed batch size is run in chunks of that size, the last one
        padded with zero images.
        """
        fixed = self.metadata.batch
        if fixed is None or batch.shape[0] == fixed:
            return [np.asarray(out) for out in self.runner(batch)]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            count = chunk.shape[0]
            if count < fixed:
                pad = np.zeros((fixed - count, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            chunks.append([np.asarray(out)[:count] for out in self.runner(chunk)])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def detect(self, images: Tensor) -> Detections:
        """Detections in input pixels for normalised network inputs ``Tensor[B, 3, H, W]``."""
        with torch_threads(self.torch_threads):
            return self._detect(images)

    def _detect(self, images: Tensor) -> Detections:
        size = tuple(int(s) for s in images.shape[-2:])
        if images.dim() != 4 or images.shape[1] != 3 or size != self.image_size:
            raise ValueError(
                f"{self.path} takes Tensor[B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got shape {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            return []
        outputs = self.run(np.ascontiguousarray(images.detach().cpu().float().numpy()))
        if self.metadata.output == KIND_RAW:
            return self._decode_raw(outputs)
        return self._read_rows(torch.from_numpy(outputs[0]))

    def _read_rows(self, rows: Tensor) -> Detections:
        """Per image the real rows of ``float32[B, D, 6]`` above the score threshold."""
        suppressed = torch.tensor(self.suppressed_labels, dtype=rows.dtype)
        results = []
        for image_rows in rows:
            keep = (image_rows[:, 5] >= 0) & (image_rows[:, 4] > self.score_threshold)
            keep &= ~torch.isin(image_rows[:, 5], suppressed)
            kept = image_rows[keep][: self.max_detections]
            results.append(
                {"boxes": kept[:, :4], "scores": kept[:, 4], "labels": kept[:, 5].long()}
            )
        return results

    def _decode_raw(self, outputs: Sequence[np.ndarray]) -> Detections:
        """The package's post-processing on the raw per-level outputs."""
        from ..detection.postprocess import postprocess

        levels = len(self.metadata.levels)
        if len(outputs) != 2 * levels:
            raise ValueError(
                f"{self.path}: {len(outputs)} outputs, expected {2 * levels} (class and box per level)"
            )
        tensors = [torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)) for out in outputs]
        return postprocess(
            tensors[:levels], tensors[levels:], self.anchors, self.num_classes,
            self.image_size, self.postprocess_config,
        )

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Detections:
        """Detect objects in image files, ``PIL`` images, arrays or tensors.

        Same pre-processing and output as :meth:`efficientdet.detection.detector.Detector.predict`:
        boxes ``Tensor[K, 4]`` xyxy in each image's original pixels.
        """
        sources = as_sources(images)
        if not sources:
            return []
        meta = self.metadata
        with torch_threads(self.torch_threads):
            batch, infos = preprocess_batch(sources, meta.image_size, meta.mean, meta.std)
            detections = self._detect(batch)
            for det, info in zip(detections, infos, strict=True):
                det["boxes"] = scale_boxes_to_original(det["boxes"], info)
        return detections

    __call__ = predict
