"""Run an exported model in ONNX Runtime with the same interface as ``Detector.predict``, and
pick a backend for ``efficientdet predict``.

:class:`OnnxDetector` reads the file's metadata (input size, mean, std, class names; see
:mod:`efficientdet.deploy.export`), letterboxes images with :func:`efficientdet.detection.transform.preprocess_batch`
exactly as the PyTorch path does, runs the graph (decoding and NMS inside) and maps the boxes
back to each image's original pixels with :func:`efficientdet.detection.transform.scale_boxes_to_original`.

:func:`build_predictor` turns a weights file and command-line options into the
``predict_fn`` that :func:`efficientdet.inference.predict.run_prediction` takes, for either backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..detection.transform import ImageSource, preprocess_batch, scale_boxes_to_original
from ..inference.tta import TTAConfig, TTADetector
from .export import OnnxMetadata, require
from .onnx_format import KIND_DETECTIONS

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "OnnxDetector", "Predictor", "build_predictor", "resolve_backend"]

BACKENDS = ("auto", "pytorch", "onnxruntime")
Detections = list[dict[str, Tensor]]


class OnnxDetector:
    """An exported detector (``export_onnx(..., with_nms=True)``) in ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
        providers: execution providers (default: CPU).
        score_threshold: keep detections scoring above this; it can only raise the file's own
            threshold (a lower one logs a warning). Default: the file's.
        max_detections: keep at most this many per image, up to the file's own number.

    ``predict(images)`` and ``detect(batch)`` return what ``Detector.predict`` and
    ``Detector.detect`` return: per image ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K],
    "labels": Tensor[K] int64}``, best first.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> None:
        ort = require("onnxruntime")

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # ORT raises its own exception types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the file ({err})") from err
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = OnnxMetadata.from_props(props, str(self.path))
        if self.metadata.output != KIND_DETECTIONS:
            raise ValueError(
                f"{self.path}: a raw export (per-level head outputs); prediction needs an export "
                "with decoding and NMS inside (`efficientdet export` without --raw)"
            )
        self.input_name = self.session.get_inputs()[0].name
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

    @property
    def image_size(self) -> tuple[int, int]:
        return self.metadata.image_size

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata.class_names

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw graph output for ``batch: float32[B, 3, H, W]``: ``float32[B, D, 6]``.

        A file exported with a fixed batch size is run in chunks of that size, the last one
        padded with zero images.
        """
        fixed = self.metadata.batch
        if fixed is None or batch.shape[0] == fixed:
            return np.asarray(self.session.run(None, {self.input_name: batch})[0])
        chunks = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            count = chunk.shape[0]
            if count < fixed:
                pad = np.zeros((fixed - count, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            chunks.append(np.asarray(self.session.run(None, {self.input_name: chunk})[0])[:count])
        return np.concatenate(chunks)

    def detect(self, images: Tensor) -> Detections:
        """Detections in input pixels for normalised network inputs ``Tensor[B, 3, H, W]``."""
        size = tuple(int(s) for s in images.shape[-2:])
        if images.dim() != 4 or images.shape[1] != 3 or size != self.image_size:
            raise ValueError(
                f"{self.path} takes Tensor[B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                f"got shape {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            return []
        rows = torch.from_numpy(
            self.run(np.ascontiguousarray(images.detach().cpu().float().numpy()))
        )
        results = []
        for image_rows in rows:
            keep = (image_rows[:, 5] >= 0) & (image_rows[:, 4] > self.score_threshold)
            kept = image_rows[keep][: self.max_detections]
            results.append(
                {"boxes": kept[:, :4], "scores": kept[:, 4], "labels": kept[:, 5].long()}
            )
        return results

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Detections:
        """Detect objects in image files, ``PIL`` images, arrays or tensors.

        Same pre-processing and output as :meth:`efficientdet.detection.detector.Detector.predict`:
        boxes ``Tensor[K, 4]`` xyxy in each image's original pixels.
        """
        if isinstance(images, (list, tuple)):
            sources = list(images)
        elif isinstance(images, Tensor) and images.dim() == 4:
            sources = list(images.unbind(0))
        else:
            sources = [images]
        if not sources:
            return []
        meta = self.metadata
        batch, infos = preprocess_batch(sources, meta.image_size, meta.mean, meta.std)
        detections = self.detect(batch)
        for det, info in zip(detections, infos, strict=True):
            det["boxes"] = scale_boxes_to_original(det["boxes"], info)
        return detections

    __call__ = predict


class Predictor(NamedTuple):
    """What ``efficientdet predict`` needs from a weights file, whatever the backend."""

    predict_fn: Callable[[list[Any]], Detections]
    class_names: list[str] | None
    label_to_category_id: list[int] | None
    num_classes: int


def resolve_backend(weights: str | Path, backend: str = "auto") -> str:
    """``"pytorch"`` or ``"onnxruntime"``; ``"auto"`` picks ONNX Runtime for ``.onnx`` files."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "onnxruntime" if Path(weights).suffix.lower() == ".onnx" else "pytorch"
    return backend


def build_predictor(
    weights: str | Path | None,
    *,
    backend: str = "auto",
    model_name: str | None = None,
    pretrained: bool = False,
    image_size: tuple[int, int] | None = None,
    score_threshold: float = 0.3,
    max_detections: int = 100,
    nms: str = "hard",
    device: str = "auto",
    optimize: bool = False,
    threads: int | None = None,
    tta: TTAConfig | None = None,
) -> Predictor:
    """A ``predict_fn(images: list[PIL.Image]) -> list[dict]`` for :func:`run_prediction`.

    Args:
        weights: a checkpoint (PyTorch backend) or an exported ``.onnx`` file; None with
            ``pretrained``.
        backend: ``"pytorch"``, ``"onnxruntime"`` or ``"auto"`` (by the file's suffix).
        model_name: architecture for weights files that do not record it (PyTorch only; for
            ONNX it must match the file's).
        pretrained: the published COCO weights of ``model_name`` (PyTorch backend), with
            COCO's class names and category ids.
        image_size: network input ``(H, W)`` (PyTorch: any; ONNX: must be the exported one).
        score_threshold: detections scoring at or below this are dropped.
        max_detections: detections per image.
        nms: ``"hard"`` or ``"soft"`` (soft-NMS: PyTorch only; exports run hard NMS).
        device: PyTorch device, ``"auto"`` for CUDA when available.
        optimize: PyTorch only: run :func:`efficientdet.modeling.optimize.optimize_for_inference`.
        threads: ONNX Runtime threads (default ``torch.get_num_threads()``).
        tta: PyTorch only: test-time augmentation (:class:`~efficientdet.inference.tta.TTADetector`).

    Returns:
        A :class:`Predictor` ``(predict_fn, class_names, label_to_category_id, num_classes)``.
    """
    kind = "pytorch" if pretrained and backend == "auto" else resolve_backend(weights or "", backend)
    if kind == "onnxruntime":
        if weights is None:
            raise ValueError(
                "the onnxruntime backend runs an exported .onnx file: export the pretrained "
                "model first (`efficientdet export --model NAME --pretrained --out model.onnx`)"
            )
        if nms != "hard":
            raise ValueError(
                f"--nms {nms} needs the PyTorch backend: an ONNX export runs hard NMS in its graph"
            )
        if tta is not None:
            raise ValueError(
                "--tta needs the PyTorch backend: an ONNX export runs one fixed input size"
            )
        onnx_detector = OnnxDetector(
            weights, threads=threads, score_threshold=score_threshold, max_detections=max_detections
        )
        meta = onnx_detector.metadata
        if model_name is not None and model_name != meta.model_name:
            raise ValueError(f"{weights} holds {meta.model_name!r}, not {model_name!r}")
        if image_size is not None and tuple(image_size) != meta.image_size:
            raise ValueError(
                f"{weights} was exported for {meta.image_size[0]}x{meta.image_size[1]} inputs; "
                "export again with --image-size to run at another size"
            )
        return Predictor(
            onnx_detector.predict, meta.class_names, meta.label_to_category_id, meta.num_classes
        )

    from ..detection.detector import Detector
    from ..inference.loading import load_model

    loaded = load_model(
        weights, model_name=model_name, pretrained=pretrained, image_size=image_size
    )
    torch_device = torch.device(
        device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    model: torch.nn.Module = loaded.model.to(torch_device)
    if optimize:
        from ..modeling.optimize import optimize_for_inference

        model = optimize_for_inference(model, channels_last=torch_device.type == "cpu")
    detector = Detector(
        model, nms=nms, max_detections=max_detections, score_threshold=score_threshold
    ).eval()
    predict_fn = TTADetector(detector, tta).predict if tta is not None else detector.predict
    return Predictor(
        predict_fn,
        loaded.class_names,
        loaded.label_to_category_id,
        loaded.model.config.num_classes,
    )
