"""What prediction calls: a function of images, or a detector of letterboxed batches.

:data:`PredictFn` is the general form, ``predict_fn(images) -> predictions``: RGB ``PIL``
images in, per image ``{"boxes": Tensor[K, 4] xyxy in that image's pixels, "scores":
Tensor[K], "labels": Tensor[K] int64 0..C-1}`` out. Test-time augmentation, tiling and any
fake in a test are such functions.

:class:`LetterboxPredictor` is a ``PredictFn`` that also says how it letterboxes (size, mean,
std) and takes the letterboxed batch directly (``detect``): then
:func:`~efficientdet.inference.predict.run_prediction` letterboxes in its reader threads, ahead
of the network, and maps the boxes back itself. :func:`~efficientdet.deploy.backends.build_predictor`
gives one for a plain PyTorch or ONNX Runtime detector.

:func:`normalize_detections` is the one check and conversion of what a predictor returned
(CPU tensors of fixed dtypes and shapes), used by prediction and by tiling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..detection.transform import (
    ImageSource,
    LetterboxInfo,
    as_sources,
    preprocess_batch,
    scale_boxes_to_original,
)

__all__ = ["Detection", "LetterboxPredictor", "PredictFn", "normalize_detections"]

PredictFn = Callable[[list[Image.Image]], Sequence[Mapping[str, Tensor]]]
Detection = dict[str, Tensor]  # {"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K]}


def _normalize(prediction: Mapping[str, Any], index: int) -> Detection:
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
    return {"boxes": boxes, "scores": scores, "labels": labels}


def normalize_detections(predictions: Sequence[Mapping[str, Any]], count: int) -> list[Detection]:
    """Check a predictor's results for ``count`` images and bring them to the CPU.

    Args:
        predictions: per image a mapping with ``boxes`` (``[K, 4]``, or empty), ``scores``
            and ``labels`` (``K`` values each), as tensors, arrays or lists, on any device.
        count: how many images were given.

    Returns:
        Per image ``{"boxes": Tensor[K, 4] float32, "scores": Tensor[K] float32,
        "labels": Tensor[K] int64}``, on the CPU, detached.

    Raises:
        ValueError: not ``count`` results, a key missing, boxes not ``[K, 4]``, or scores
            and labels not ``K`` long; the message names the result.
    """
    predictions = list(predictions)
    if len(predictions) != count:
        raise ValueError(f"predict_fn returned {len(predictions)} results for {count} images")
    return [_normalize(p, i) for i, p in enumerate(predictions)]


@dataclass(frozen=True)
class LetterboxPredictor:
    """A detector that takes letterboxed batches, usable as a :data:`PredictFn` too.

    Attributes:
        detect: ``detect(batch: Tensor[B, 3, H, W] float32, normalised, letterboxed to
            image_size) -> per image {"boxes": Tensor[K, 4] xyxy in input pixels, "scores":
            Tensor[K], "labels": Tensor[K] int64}`` (``Detector.detect`` under no_grad on its
            device, ``OnnxDetector.detect``).
        image_size: ``(H, W)`` of the network input.
        mean, std: per-channel normalisation in 0..1 units.
    """

    detect: Callable[[Tensor], Sequence[Mapping[str, Tensor]]]
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: ImageSource | Sequence[ImageSource]) -> list[Detection]:
        """Letterbox ``images`` (files, ``PIL`` images, arrays, tensors) and detect: boxes in
        each image's original pixels, as ``Detector.predict`` returns them."""
        sources = as_sources(images)
        if not sources:
            return []
        batch, infos = preprocess_batch(sources, self.image_size, self.mean, self.std)
        return self.detect_letterboxed(batch, infos)

    def detect_letterboxed(self, batch: Tensor, infos: Sequence[LetterboxInfo]) -> list[Detection]:
        """Detections of a batch :func:`~efficientdet.detection.transform.letterbox` made.

        Args:
            batch: ``Tensor[B, 3, H, W]``, the letterboxed images.
            infos: the ``B`` :class:`LetterboxInfo` of the images, in order.

        Returns:
            :func:`normalize_detections` of ``detect(batch)``, boxes mapped back to each
            image's original pixels.
        """
        detections = normalize_detections(self.detect(batch), len(infos))
        for det, info in zip(detections, infos, strict=True):
            det["boxes"] = scale_boxes_to_original(det["boxes"], info)
        return detections
