"""Run an exported model in ONNX Runtime with the same interface as ``Detector.predict``.

:class:`OnnxDetector` reads the file's metadata (input size, mean, std, class names; see
:mod:`efficientdet.deploy.export`), letterboxes images with :func:`efficientdet.detection.transform.preprocess_batch`
exactly as the PyTorch path does, runs the graph (decoding and NMS inside) and maps the boxes
back to each image's original pixels with :func:`efficientdet.detection.transform.scale_boxes_to_original`.

:func:`onnx_providers` turns ``--device`` into ONNX Runtime's execution providers: the one
place that chooses them, for every session that predicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..detection.transform import ImageSource, as_sources, preprocess_batch, scale_boxes_to_original
from ..devices import parse_device
from ..modeling.pretrained import unused_labels
from .export import OnnxMetadata, require
from .onnx_format import KIND_DETECTIONS

log = logging.getLogger(__name__)

__all__ = ["OnnxDetector", "onnx_providers"]

Detections = list[dict[str, Tensor]]
# An ONNX Runtime execution provider: its name, or its name and options.
Provider = str | tuple[str, dict[str, Any]]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


def _is_auto(device: str | torch.device) -> bool:
    return isinstance(device, str) and device.strip().lower() == "auto"


def onnx_providers(device: str | torch.device = "auto") -> list[Provider]:
    """ONNX Runtime's execution providers for ``device``, best first.

    - ``"cpu"``: the CPU provider.
    - ``"cuda"`` / ``"cuda:N"``: TensorRT (where this onnxruntime has it; its engines cached
      in ``<torch hub dir>/tensorrt``), then CUDA, both on GPU ``N`` (``device_id``, 0 by
      default), then the CPU for operators they do not run.
    - ``"auto"``: the CUDA list when PyTorch sees a GPU and this onnxruntime has the CUDA
      provider, else the CPU.

    Raises:
        ValueError: a device name other than those (:func:`efficientdet.devices.parse_device`),
            or CUDA asked for with an onnxruntime built without it (the CPU-only
            ``onnxruntime`` package, not ``onnxruntime-gpu``).
    """
    ort = require("onnxruntime")
    available = set(ort.get_available_providers())
    if _is_auto(device):
        if CUDA_PROVIDER not in available or not torch.cuda.is_available():
            return [CPU_PROVIDER]
        target = torch.device("cuda")
    else:
        target = parse_device(device)
    if target.type == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in available:
        raise ValueError(
            f"--device {device}: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} (it has "
            f"{', '.join(sorted(available))}); pip install onnxruntime-gpu in place of onnxruntime"
        )
    on_gpu = {"device_id": target.index or 0}
    first: list[Provider] = []
    if TENSORRT_PROVIDER in available:
        # TensorRT builds an engine for the graph (minutes for a detector); the cache keeps
        # it for the next session of the same file on the same GPU.
        from torch.hub import get_dir

        engines = Path(get_dir()) / "tensorrt"
        first = [(TENSORRT_PROVIDER, {
            **on_gpu, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
        })]
    return [*first, (CUDA_PROVIDER, dict(on_gpu)), CPU_PROVIDER]


class OnnxDetector:
    """An exported detector (``export_onnx(..., with_nms=True)``) in ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
        device: where the graph runs: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
            (:func:`onnx_providers`). Pre- and post-processing stay on the CPU.
        providers: execution providers, in place of ``device``'s.
        score_threshold: keep detections scoring above this; it can only raise the file's own
            threshold (a lower one logs a warning). Default: the file's.
        max_detections: keep at most this many per image, up to the file's own number.

    ``predict(images)`` and ``detect(batch)`` return what ``Detector.predict`` and
    ``Detector.detect`` return: per image ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K],
    "labels": Tensor[K] int64}``, best first. Rows whose label the file's class names call
    ``N/A`` (COCO's unused ids in an export of a published model; ``suppressed_labels``) are
    dropped. In the graph they can still take top-k places (its NMS is class-aware, so they
    suppress no box of another class); they never come out.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        providers: Sequence[Provider] | None = None,
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
        wanted = list(providers) if providers is not None else onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as err:  # ORT raises its own exception types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the file ({err})") from err
        self._check_providers(wanted, explicit=providers is not None or not _is_auto(device))
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
        self.suppressed_labels = unused_labels(self.metadata.class_names)

    def _check_providers(self, wanted: list[Provider], *, explicit: bool) -> None:
        """Refuse (asked for) or log (``auto``) a session that fell back from the GPU to the
        CPU, as ONNX Runtime does when the CUDA provider cannot start (its CUDA or cuDNN
        libraries missing, or of another version)."""
        names = [p if isinstance(p, str) else p[0] for p in wanted]
        running = self.session.get_providers()
        if CUDA_PROVIDER not in names or CUDA_PROVIDER in running:
            return
        problem = (
            f"{self.path}: ONNX Runtime could not start {CUDA_PROVIDER} and runs on "
            f"{', '.join(running)}; see its log above (the CUDA and cuDNN libraries that "
            "onnxruntime-gpu needs)"
        )
        if explicit:
            raise ValueError(problem)
        log.warning("%s", problem)

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

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Detections:
        """Detect objects in image files, ``PIL`` images, arrays or tensors.

        Same pre-processing and output as :meth:`efficientdet.detection.detector.Detector.predict`:
        boxes ``Tensor[K, 4]`` xyxy in each image's original pixels.
        """
        sources = as_sources(images)
        if not sources:
            return []
        meta = self.metadata
        batch, infos = preprocess_batch(sources, meta.image_size, meta.mean, meta.std)
        detections = self.detect(batch)
        for det, info in zip(detections, infos, strict=True):
            det["boxes"] = scale_boxes_to_original(det["boxes"], info)
        return detections

    __call__ = predict
