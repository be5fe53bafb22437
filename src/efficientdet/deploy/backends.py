"""One predictor for ``efficientdet predict`` (and any caller) from a weights file, whatever
runs it: the PyTorch :class:`~efficientdet.detection.detector.Detector`, or an export in ONNX
Runtime, OpenVINO or LiteRT (:class:`~efficientdet.deploy.exported.ExportedDetector`).

:func:`build_predictor` turns a weights file and the command line's options into the
``predict_fn`` that :func:`efficientdet.inference.predict.run_prediction` takes: for a plain
detector a :class:`~efficientdet.inference.predictor.LetterboxPredictor`, so that
``run_prediction`` letterboxes in its reader threads and hands the network whole batches; with
test-time augmentation a plain function of images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..devices import resolve_device
from ..inference.predictor import LetterboxPredictor
from ..inference.tta import TTAConfig, TTADetector
from .exported import RUNTIMES, runtime_for
from .runtimes import load_exported

__all__ = ["BACKENDS", "Predictor", "build_predictor", "resolve_backend"]

BACKENDS = ("auto", "pytorch", *RUNTIMES)
Detections = list[dict[str, Tensor]]


class Predictor(NamedTuple):
    """What ``efficientdet predict`` needs from a weights file, whatever the backend."""

    predict_fn: Callable[[list[Any]], Detections]
    class_names: list[str] | None
    label_to_category_id: list[int] | None
    num_classes: int


def resolve_backend(weights: str | Path, backend: str = "auto") -> str:
    """``"pytorch"`` or an export's runtime; ``"auto"`` picks by the file's suffix (``.onnx``:
    ONNX Runtime, ``.xml``: OpenVINO, ``.tflite``: LiteRT, anything else: PyTorch)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return runtime_for(weights) or "pytorch"
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
    device: str | torch.device = "auto",
    optimize: bool = False,
    threads: int | None = None,
    tta: TTAConfig | None = None,
    precision: str | None = None,
) -> Predictor:
    """A ``predict_fn(images: list[PIL.Image]) -> list[dict]`` for :func:`run_prediction`.

    Args:
        weights: a checkpoint (PyTorch backend) or an exported ``.onnx``, ``.xml``
            (OpenVINO) or ``.tflite`` (LiteRT) file; None with ``pretrained``.
        backend: ``"pytorch"``, ``"onnxruntime"``, ``"openvino"``, ``"litert"`` or ``"auto"``
            (by the file's suffix).
        model_name: architecture for weights files that do not record it (PyTorch only; for
            ONNX it must match the file's).
        pretrained: the published COCO weights of ``model_name`` (PyTorch backend), with
            COCO's class names and category ids.
        image_size: network input ``(H, W)`` (PyTorch: any; ONNX: must be the exported one).
        score_threshold: detections scoring at or below this are dropped.
        max_detections: detections per image.
        nms: ``"hard"`` or ``"soft"`` (soft-NMS: PyTorch and raw exports; exports with NMS
            inside run hard NMS).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available):
            the PyTorch device (:func:`efficientdet.devices.resolve_device`), or ONNX Runtime's
            execution providers (:func:`~efficientdet.deploy.onnx_backend.onnx_providers`).
        optimize: PyTorch only: run :func:`efficientdet.modeling.optimize.optimize_for_inference`.
        threads: the export runtime's threads (default ``torch.get_num_threads()``).
        tta: PyTorch only: test-time augmentation (:class:`~efficientdet.inference.tta.TTADetector`).
        precision: OpenVINO's inference precision hint (``"bf16"``, ``"f32"``).

    Returns:
        A :class:`Predictor` ``(predict_fn, class_names, label_to_category_id, num_classes)``.
    """
    kind = "pytorch" if pretrained and backend == "auto" else resolve_backend(weights or "", backend)
    if kind != "pytorch":
        return _export_predictor(
            weights, kind, model_name=model_name, image_size=image_size,
            score_threshold=score_threshold, max_detections=max_detections, nms=nms,
            device=device, threads=threads, tta=tta, precision=precision,
        )
    from ..detection.detector import Detector
    from ..inference.loading import load_model

    torch_device = resolve_device(device)  # before the weights load: a bad --device fails fast
    loaded = load_model(
        weights, model_name=model_name, pretrained=pretrained, image_size=image_size
    )
    model: torch.nn.Module = loaded.model.to(torch_device)
    if optimize:
        from ..modeling.optimize import optimize_for_inference

        model = optimize_for_inference(model, channels_last=torch_device.type == "cpu")
    detector = Detector(
        model, nms=nms, max_detections=max_detections, score_threshold=score_threshold,
        suppressed_labels=loaded.suppressed_labels,
    ).eval()
    predict_fn: Callable[[list[Any]], Detections]
    if tta is not None:
        predict_fn = TTADetector(detector, tta).predict
    else:
        config = detector.config  # what Detector.predict letterboxes to
        predict_fn = LetterboxPredictor(
            _detect_on(detector, torch_device), config.image_size, config.mean, config.std
        )
    return Predictor(
        predict_fn,
        loaded.class_names,
        loaded.label_to_category_id,
        loaded.model.config.num_classes,
    )


def _detect_on(detector: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Detections]:
    """``detect(batch: Tensor[B, 3, H, W]) -> detections in input pixels`` of an evaluation-mode
    ``detector`` on ``device``, without gradients (what ``Detector.predict`` runs after its
    letterbox)."""

    @torch.no_grad()
    def detect(batch: Tensor) -> Detections:
        detections: Detections = detector(batch.to(device))
        return detections

    return detect


def _export_predictor(
    weights: str | Path | None,
    runtime: str,
    *,
    model_name: str | None,
    image_size: tuple[int, int] | None,
    score_threshold: float,
    max_detections: int,
    nms: str,
    device: str | torch.device,
    threads: int | None,
    tta: TTAConfig | None,
    precision: str | None,
) -> Predictor:
    """:func:`build_predictor` for an exported file in ``runtime``."""
    if weights is None:
        raise ValueError(
            f"the {runtime} backend runs an exported file: export the pretrained model first "
            "(`efficientdet export --model NAME --pretrained --out model.onnx`)"
        )
    if tta is not None:
        raise ValueError("--tta needs the PyTorch backend: an export runs one fixed input size")
    detector = load_exported(
        weights, runtime, threads=threads, device=device, precision=precision,
        score_threshold=score_threshold, max_detections=max_detections, nms=nms,
    )
    meta = detector.metadata
    if model_name is not None and model_name != meta.model_name:
        raise ValueError(f"{weights} holds {meta.model_name!r}, not {model_name!r}")
    if image_size is not None and tuple(image_size) != meta.image_size:
        raise ValueError(
            f"{weights} was exported for {meta.image_size[0]}x{meta.image_size[1]} inputs; "
            "export again with --image-size to run at another size"
        )
    letterboxed = LetterboxPredictor(detector.detect, meta.image_size, meta.mean, meta.std)
    return Predictor(letterboxed, meta.class_names, meta.label_to_category_id, meta.num_classes)
