"""The traceable detection graph that :mod:`efficientdet.deploy.export` writes to ONNX.

:class:`DetectionExport` is a network plus anchors, decoding and class-aware NMS with a fixed
output shape ``[B, max_detections, 6]``; :class:`RawExport` the network's per-level outputs as
one tuple. :func:`class_nms` is a custom operator: in PyTorch it runs
:func:`efficientdet.detection.postprocess.class_aware_nms`, in ONNX one ``NonMaxSuppression`` node with a
class axis (per image and class, no coordinate offsets), which ONNX Runtime runs much faster
than one NMS over all classes (``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, check_image_size
from ..detection.anchors import generate_anchors
from ..detection.boxes import clip_boxes, decode, flatten_level_outputs
from ..detection.postprocess import class_aware_nms, select_top_k, suppress_labels
from .onnx_format import PAD_LABEL

__all__ = [
    "PAD_LABEL",
    "DetectionExport",
    "RawExport",
    "class_nms",
    "model_config",
    "onnx_translations",
    "padded_detections",
]


@torch.library.custom_op("efficientdet::class_nms", mutates_args=())
def class_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    num_classes: int,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> Tensor:
    """Class-aware NMS over a batch, as ONNX ``NonMaxSuppression`` with a class axis does it.

    Exported as one ``NonMaxSuppression`` whose scores are ``[B, C, K]`` (each candidate's
    score in its class's row, 0 elsewhere), so ONNX Runtime runs NMS per (image, class) on
    that class's candidates only, without coordinate offsets between classes.

    Args:
        boxes: ``Tensor[B, K, 4]`` xyxy.
        scores: ``Tensor[B, K]``; candidates at or below ``score_threshold`` are ignored.
        labels: ``Tensor[B, K]`` int64 in ``0..num_classes-1``.
        num_classes: C.
        iou_threshold: a box is suppressed by a better one of its class with IoU above this.
        score_threshold: see ``scores``.
        max_per_class: survivors kept per (image, class), best first.

    Returns:
        ``Tensor[M, 3]`` int64 rows ``(image, class, candidate index)``, in no particular order.
    """
    rows = []
    for b in range(boxes.shape[0]):
        candidates = torch.nonzero(scores[b] > score_threshold).squeeze(1)
        keep = class_aware_nms(
            boxes[b, candidates].float(), scores[b, candidates].float(), labels[b, candidates],
            iou_threshold,
        )
        index = candidates[keep]  # by decreasing score
        kept_labels = labels[b, index]
        if index.numel():
            onehot = torch.nn.functional.one_hot(kept_labels, num_classes)
            rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # place within its class
            index, kept_labels = index[rank < max_per_class], kept_labels[rank < max_per_class]
        rows.append(torch.stack([torch.full_like(index, b), kept_labels, index], dim=1))
    return torch.cat(rows) if rows else labels.new_zeros((0, 3))


@class_nms.register_fake
def _class_nms_fake(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    num_classes: int,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return labels.new_empty((count, 3))


def _class_nms_onnx(
    boxes: Any,
    scores: Any,
    labels: Any,
    num_classes: int,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> Any:
    """ONNX translation of :func:`class_nms` (onnxscript, traced by the exporter)."""
    import onnxscript

    op: Any = onnxscript.opset18  # traced by the exporter; its typed stubs do not apply here
    depth = op.Constant(value_ints=[num_classes])
    off_on = op.CastLike(op.Constant(value_floats=[0.0, 1.0]), scores)
    class_scores = op.Mul(op.OneHot(labels, depth, off_on, axis=1), op.Unsqueeze(scores, [1]))
    return op.NonMaxSuppression(
        boxes,
        class_scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )


def padded_detections(
    class_outputs: Sequence[Tensor],
    box_outputs: Sequence[Tensor],
    anchors: Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 5000,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    suppressed_labels: Sequence[int] = (),
) -> Tensor:
    """Decode and class-aware NMS for a batch, into a fixed-shape tensor (traceable).

    The same selection as :func:`efficientdet.detection.postprocess.postprocess` with ``nms="hard"``:
    top ``pre_nms_top_k`` (anchor, class) pairs per image, scores above ``score_threshold``,
    decoded and clipped, class-aware NMS at ``iou_threshold`` (:func:`class_nms`), the best
    ``max_detections`` kept; ``suppressed_labels`` never (their logits are ``-inf``,
    :func:`~efficientdet.detection.postprocess.suppress_labels`). In ONNX all images and
    classes go through one NMS node.

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` logits.
        box_outputs: per level ``Tensor[B, A * 4, H_l, W_l]`` ``(dy, dx, dh, dw)`` deltas.
        anchors: ``Tensor[N, 4]`` xyxy anchors in the outputs' order.
        num_classes: C.
        image_size: network input ``(H, W)``; boxes are clipped to it.

    Returns:
        ``Tensor[B, max_detections, 6]`` rows ``(x1, y1, x2, y2, score, class)`` by
        decreasing score; padding rows are 0 with class :data:`PAD_LABEL`.
    """
    class_outputs = suppress_labels(class_outputs, num_classes, suppressed_labels)
    scores, anchor_index, labels = select_top_k(
        class_outputs, num_classes, pre_nms_top_k, traceable=True
    )
    batch, k = scores.shape
    deltas = flatten_level_outputs(list(box_outputs), 4)  # [B, N, 4]
    picked = deltas.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4)).float()
    boxes = clip_boxes(decode(picked, anchors.float()[anchor_index]), image_size)  # [B, k, 4]

    selected = class_nms(
        boxes, scores, labels, num_classes, iou_threshold, score_threshold, max_detections
    )  # [M, 3] (image, class, candidate)
    kept = selected[:, 0] * k + selected[:, 2]
    # Scores of the survivors, 0 elsewhere; sigmoid scores above a threshold >= 0 are > 0.
    flat_scores = scores.reshape(-1)
    kept_scores = torch.zeros_like(flat_scores).scatter(0, kept, flat_scores[kept])
    top_scores, top_index = kept_scores.reshape(batch, k).topk(min(max_detections, k), dim=1)
    valid = top_scores > 0
    top_boxes = boxes.gather(1, top_index.unsqueeze(-1).expand(-1, -1, 4))
    top_boxes = torch.where(valid.unsqueeze(-1), top_boxes, torch.zeros_like(top_boxes))
    top_labels = torch.where(
        valid, labels.gather(1, top_index).to(top_scores.dtype), torch.full_like(top_scores, PAD_LABEL)
    )
    out = torch.cat([top_boxes, top_scores.unsqueeze(-1), top_labels.unsqueeze(-1)], dim=-1)
    missing = max_detections - out.shape[1]
    if missing > 0:  # fewer candidates than detections asked for
        pad = out.new_zeros((batch, missing, 6))
        pad[..., 5] = PAD_LABEL
        out = torch.cat([out, pad], dim=1)
    return out


class DetectionExport(nn.Module):
    """A network plus anchors, decoding and NMS: ``images [B, 3, H, W] -> [B, D, 6]``.

    The anchors are built once for ``image_size`` and kept as a (non-persistent) buffer, so
    the graph takes exactly that input size. See :func:`padded_detections` for the output;
    ``suppressed_labels`` (COCO's unused ids for a published model) are never detected.
    """

    anchors: Tensor

    def __init__(
        self,
        model: nn.Module,
        image_size: tuple[int, int],
        *,
        score_threshold: float = 0.001,
        pre_nms_top_k: int = 5000,
        max_detections: int = 100,
        iou_threshold: float = 0.5,
        suppressed_labels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        config = model_config(model)
        check_image_size(image_size, config.max_level)
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if max_detections < 1 or pre_nms_top_k < 1:
            raise ValueError(
                f"max_detections and pre_nms_top_k must be >= 1, got {max_detections} and "
                f"{pre_nms_top_k}"
            )
        self.model = model
        self.num_classes = config.num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.score_threshold = float(score_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.max_detections = int(max_detections)
        self.iou_threshold = float(iou_threshold)
        self.suppressed_labels = tuple(sorted({int(label) for label in suppressed_labels}))
        anchors = generate_anchors(
            self.image_size, config.min_level, config.max_level, config.anchors
        )
        self.register_buffer("anchors", anchors, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """``images: Tensor[B, 3, H, W]`` -> ``Tensor[B, max_detections, 6]``."""
        class_outputs, box_outputs = self.model(images)
        return padded_detections(
            class_outputs,
            box_outputs,
            self.anchors,
            self.num_classes,
            self.image_size,
            score_threshold=self.score_threshold,
            pre_nms_top_k=self.pre_nms_top_k,
            max_detections=self.max_detections,
            iou_threshold=self.iou_threshold,
            suppressed_labels=self.suppressed_labels,
        )


class RawExport(nn.Module):
    """The network with its per-level outputs flattened into one tuple, class levels first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``images: Tensor[B, 3, H, W]`` -> ``(class_P3, ..., class_P7, box_P3, ..., box_P7)``."""
        class_outputs, box_outputs = self.model(images)
        return (*class_outputs, *box_outputs)


def model_config(model: nn.Module) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            f"model.config must be a ModelConfig, got {type(config).__name__}; build the network "
            "with efficientdet.create_model or efficientdet.inference.loading.load_trained"
        )
    return config


def onnx_translations() -> dict[Any, Any]:
    """``custom_translation_table`` entries for ``torch.onnx.export`` of these modules."""
    return {torch.ops.efficientdet.class_nms.default: _class_nms_onnx}
