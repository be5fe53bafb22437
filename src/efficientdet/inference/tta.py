"""Test-time augmentation: the detector run at several input scales (and mirrored), fused.

Each augmentation resizes the letterboxed input batch by a factor (``0.83``, ``1.0``,
``1.2`` of the model's input size by default) and, when the classes are mirror-symmetric,
also flips it horizontally. The detections of each run are mapped back into the original
input's pixels and fused per image by weighted box fusion
(:func:`efficientdet.detection.fusion.weighted_boxes_fusion`): clusters of boxes of one
class with IoU above 0.55, score-weighted average boxes, scores averaged over the number of
augmentations (a box only one run found keeps ``1/N`` of its score).

:class:`TTADetector` wraps a :class:`~efficientdet.detection.detector.Detector` and behaves
like one in evaluation mode (``tta(images)`` gives detections in input pixels,
``tta.predict(files)`` in original pixels), so evaluation and ``predict`` use it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..detection.boxes import clip_boxes
from ..detection.detector import Detections, Detector, predict_images
from ..detection.fusion import weighted_boxes_fusion
from ..detection.transform import ImageSource

__all__ = ["DEFAULT_TTA_SCALES", "TTAConfig", "TTADetector"]

DEFAULT_TTA_SCALES = (0.83, 1.0, 1.2)
# Resized inputs are rounded to a multiple of this (the P3 stride), so P3 anchors stay exact.
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class TTAConfig:
    """Which augmentations to run and how to fuse them.

    Attributes:
        scales: input-size factors; ``1.0`` is the model's own input size.
        flip: also run each scale mirrored left-right (only for mirror-symmetric classes).
        iou_threshold: weighted box fusion joins boxes above this IoU.
    """

    scales: tuple[float, ...] = DEFAULT_TTA_SCALES
    flip: bool = False
    iou_threshold: float = 0.55

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"TTA scales must be positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"TTA iou_threshold must be in (0, 1], got {self.iou_threshold}")

    @property
    def augmentations(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` of every run, in order."""
        flips = (False, True) if self.flip else (False,)
        return [(scale, flipped) for scale in self.scales for flipped in flips]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` times ``scale``, each side rounded to a multiple of :data:`SIZE_MULTIPLE`
    (at least one multiple); ``scale == 1`` keeps ``size`` exactly."""
    if scale == 1.0:
        return (int(size[0]), int(size[1]))
    return (
        max(SIZE_MULTIPLE, round(size[0] * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE),
        max(SIZE_MULTIPLE, round(size[1] * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE),
    )


class TTADetector(nn.Module):
    """A detector run once per augmentation of :class:`TTAConfig`, fused by WBF.

    Args:
        detector: the detector; its post-processing settings (score threshold, NMS, maximum
            detections) apply to every run and the maximum to the fused result.
        config: the augmentations (default: scales 0.83, 1.0, 1.2, no flips).
    """

    def __init__(self, detector: Detector, config: TTAConfig | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.tta = config if config is not None else TTAConfig()

    @property
    def config(self) -> ModelConfig:
        """The wrapped network's configuration."""
        return self.detector.config

    @property
    def class_names(self) -> list[str] | None:
        return self.detector.class_names

    def forward(self, images: Tensor) -> Detections:
        """Fused detections for a batch of letterboxed, normalised network inputs.

        Args:
            images: ``Tensor[B, 3, H, W]``.

        Returns:
            Per image ``{"boxes": Tensor[K, 4] xyxy input pixels, "scores": Tensor[K],
            "labels": Tensor[K] int64}``, best first, ``K <= max_detections``.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        runs: list[Detections] = []
        for scale, flipped in self.tta.augmentations:
            size = scaled_size((height, width), scale)
            batch = images
            if size != (height, width):
                batch = F.interpolate(
                    images, size=size, mode="bilinear", align_corners=False,
                    antialias=size[0] < height,
                )
            if flipped:
                batch = batch.flip(-1)
            detections = self.detector.detect(batch)
            factor = torch.tensor(
                [width / size[1], height / size[0]] * 2, device=images.device
            )
            for det in detections:
                boxes = det["boxes"].float()
                if flipped:
                    boxes = torch.stack(
                        [size[1] - boxes[:, 2], boxes[:, 1], size[1] - boxes[:, 0], boxes[:, 3]],
                        dim=1,
                    )
                det["boxes"] = clip_boxes(boxes * factor, (height, width))
            runs.append(detections)
        max_detections = self.detector.postprocess_config.max_detections
        fused = []
        for per_image in zip(*runs, strict=True):
            result = weighted_boxes_fusion(
                list(per_image), iou_threshold=self.tta.iou_threshold, max_detections=max_detections
            )
            fused.append({k: v.to(images.device) for k, v in result.items()})
        return fused

    @torch.no_grad()
    def predict(self, images: ImageSource | Sequence[ImageSource]) -> Detections:
        """Like :meth:`Detector.predict`: image sources in, fused detections in original pixels.

        Args:
            images: one image source, a list of them (files, ``PIL`` images, arrays), or a
                ``Tensor[B, C, H, W]`` batch of images.

        Returns:
            One dict per image ``{"boxes": Tensor[K, 4] xyxy original pixels,
            "scores": Tensor[K], "labels": Tensor[K] int64}``.
        """
        return predict_images(self, images)
