"""From raw head outputs to detections (REFERENCE.md section 5).

Per image: take the ``pre_nms_top_k`` best (anchor, class) pairs over all levels with one
``topk`` (never a full sort), drop those at or below ``score_threshold``, decode only those
candidates, clip them to the input, run class-aware NMS (hard, or Gaussian soft-NMS as in
the official evaluation) and keep at most ``max_detections``. Boxes come out in input
pixels; :func:`letterbox_to_original` maps them back to the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from .boxes import clip_boxes, decode, elementwise_box_iou, flatten_level_outputs

NMS_METHODS = ("hard", "soft")


@dataclass(frozen=True)
class PostprocessConfig:
    """Detection post-processing settings.

    Attributes:
        score_threshold: candidates with sigmoid score ``<=`` this are dropped (and soft-NMS
            drops candidates whose decayed score falls to it).
        pre_nms_top_k: candidates (anchor x class pairs) per image kept before NMS.
        max_detections: detections per image kept after NMS.
        nms: ``"hard"`` (class-aware NMS) or ``"soft"`` (class-aware Gaussian soft-NMS).
        iou_threshold: IoU above which hard NMS suppresses a box.
        soft_nms_sigma: Gaussian soft-NMS decays a score by ``exp(-iou**2 / sigma)``.
    """

    score_threshold: float = 0.001
    pre_nms_top_k: int = 5000
    max_detections: int = 100
    nms: str = "hard"
    iou_threshold: float = 0.5
    soft_nms_sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.nms not in NMS_METHODS:
            raise ValueError(
                f"nms={self.nms!r} is not one of {', '.join(repr(m) for m in NMS_METHODS)}"
            )
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.pre_nms_top_k < 1:
            raise ValueError(f"pre_nms_top_k must be >= 1, got {self.pre_nms_top_k}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if self.soft_nms_sigma <= 0:
            raise ValueError(f"soft_nms_sigma must be positive, got {self.soft_nms_sigma}")


def _soft_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float,
    score_threshold: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    """Class-aware Gaussian soft-NMS over a batch, one greedy pick per image per step.

    Args:
        boxes: ``Tensor[B, K, 4]`` xyxy.
        scores: ``Tensor[B, K]``.
        labels: ``Tensor[B, K]`` int64.

    Returns:
        ``keep``: ``Tensor[B, D]`` int64 candidate indices in pick order, -1 past an image's
        last pick; ``kept_scores``: ``Tensor[B, D]`` decayed scores at pick time (0 where
        ``keep`` is -1). ``D <= max_detections``.
    """
    batch, num = scores.shape
    neg_inf = torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device)
    current = torch.where(scores > score_threshold, scores, neg_inf)
    steps = min(max_detections, num)
    keep = torch.full((batch, steps), -1, dtype=torch.int64, device=scores.device)
    kept_scores = scores.new_zeros((batch, steps))
    rows = torch.arange(batch, device=scores.device)
    taken = 0
    for step in range(steps):
        best_score, best = current.max(dim=1)  # [B]
        alive = best_score > neg_inf
        if not bool(alive.any()):
            break
        keep[:, step] = torch.where(alive, best, keep[:, step])
        kept_scores[:, step] = torch.where(alive, best_score, kept_scores[:, step])
        taken = step + 1
        iou = elementwise_box_iou(boxes, boxes[rows, best].unsqueeze(1))  # [B, K]
        same_class = labels == labels[rows, best].unsqueeze(1)
        decay = torch.where(same_class, torch.exp(-(iou * iou) / sigma), 1.0)
        current = current * decay
        current[rows, best] = neg_inf
        current = torch.where(current > score_threshold, current, neg_inf)
    return keep[:, :taken], kept_scores[:, :taken]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor]:
    """Class-aware Gaussian soft-NMS (Bodla et al. 2017) for one image.

    Greedily picks the highest current score, then multiplies the scores of the remaining
    boxes of the same class by ``exp(-iou**2 / sigma)``; boxes whose score falls to
    ``score_threshold`` or below are dropped. Stops after ``max_detections`` picks.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy.
        scores: ``Tensor[K]``.
        labels: ``Tensor[K]`` int64 classes; boxes of different classes never interact.

    Returns:
        ``keep``: ``Tensor[D]`` int64 indices into the inputs in decreasing order of decayed
        score, and ``Tensor[D]`` those decayed scores.
    """
    keep, kept = _soft_nms_padded(
        boxes.unsqueeze(0),
        scores.unsqueeze(0),
        labels.unsqueeze(0),
        sigma,
        score_threshold,
        max_detections,
    )
    valid = keep[0] >= 0
    return keep[0][valid], kept[0][valid]


def select_top_k(
    class_outputs: Sequence[Tensor], num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (anchor, class) pairs of each image over all levels.

    Two exact stages keep this cheap for ~49k anchors x 90 classes: every pair in the
    overall top ``k`` belongs to an anchor whose best class is among the top ``k`` anchors
    (fewer than ``k`` pairs beat it), so the top ``k`` anchors by best-class logit are taken
    first and the top ``k`` pairs are then chosen among their ``k * C`` logits. The outputs
    are read in their own layout, without a permuted copy of all logits.

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` logits.
        num_classes: C.
        k: candidates per image (capped at ``N * C``).

    Returns:
        ``scores`` ``Tensor[B, k]`` (sigmoid), ``anchor_index`` ``Tensor[B, k]`` into the
        anchor order of :func:`efficientdet.anchors.generate_anchors`, and ``labels``
        ``Tensor[B, k]`` (int64, ``0..C-1``); in no particular order.
    """
    levels = []
    for i, out in enumerate(class_outputs):
        if out.dim() != 4 or out.shape[1] % num_classes:
            raise ValueError(
                f"class output of level index {i} has shape {tuple(out.shape)}; expected "
                f"[B, A * {num_classes}, H, W]"
            )
        batch, channels, height, width = out.shape
        levels.append(out.reshape(batch, channels // num_classes, num_classes, height * width))
    # Best class logit per anchor, in anchor order (location-major, anchor-minor).
    anchor_max = torch.cat(
        [v.amax(dim=2).transpose(1, 2).reshape(v.shape[0], -1) for v in levels], dim=1
    )  # [B, N]
    batch, num_anchors = anchor_max.shape
    top_anchor = anchor_max.topk(min(k, num_anchors), dim=1, sorted=False).indices  # [B, Ka]

    class_offsets = torch.arange(num_classes, device=anchor_max.device)
    candidates = anchor_max.new_empty((batch, top_anchor.shape[1], num_classes))
    start = 0
    for v in levels:
        per_location, hw = v.shape[1], v.shape[3]
        count = per_location * hw
        local = top_anchor - start
        in_level = (local >= 0) & (local < count)
        local = local.clamp(0, count - 1)
        location, anchor = local // per_location, local % per_location
        # Element (anchor, c, location) of the level's [A, C, HW] block.
        flat_index = (anchor * num_classes * hw + location).unsqueeze(-1) + class_offsets * hw
        values = v.reshape(batch, -1).gather(1, flat_index.reshape(batch, -1))
        values = values.reshape(candidates.shape)
        candidates = torch.where(in_level.unsqueeze(-1), values, candidates)
        start += count

    flat = candidates.reshape(batch, -1)
    top_logits, index = flat.topk(min(k, flat.shape[1]), dim=1, sorted=False)
    anchor_index = top_anchor.gather(1, index // num_classes)
    return top_logits.float().sigmoid(), anchor_index, index % num_classes


def postprocess(
    class_outputs: Sequence[Tensor],
    box_outputs: Sequence[Tensor],
    anchors: Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    config: PostprocessConfig | None = None,
) -> list[dict[str, Tensor]]:
    """Detections from raw per-level outputs.

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` logits.
        box_outputs: per level ``Tensor[B, A * 4, H_l, W_l]`` ``(dy, dx, dh, dw)`` deltas.
        anchors: ``Tensor[N, 4]`` xyxy anchors in the same order.
        num_classes: C.
        image_size: network input ``(H, W)``; boxes are clipped to it.
        config: post-processing settings (defaults: :class:`PostprocessConfig`).

    Returns:
        Per image ``{"boxes": Tensor[K, 4] xyxy input pixels, "scores": Tensor[K],
        "labels": Tensor[K] int64 in 0..C-1}``, by decreasing score, ``K <= max_detections``.
    """
    config = config if config is not None else PostprocessConfig()
    deltas = flatten_level_outputs(list(box_outputs), 4)  # [B, N, 4]
    num_class_predictions = sum(out[0].numel() for out in class_outputs) // num_classes
    if num_class_predictions != anchors.shape[0] or deltas.shape[1] != anchors.shape[0]:
        raise ValueError(
            f"{anchors.shape[0]} anchors but {num_class_predictions} class and "
            f"{deltas.shape[1]} box predictions per image; the anchors do not match the "
            "model's outputs"
        )

    scores, anchor_index, labels = select_top_k(class_outputs, num_classes, config.pre_nms_top_k)
    picked = deltas.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4)).float()
    boxes = decode(picked, anchors.float()[anchor_index])  # [B, k, 4]
    boxes = clip_boxes(boxes, image_size)

    results = []
    if config.nms == "soft":
        keep, kept_scores = _soft_nms_padded(
            boxes,
            scores,
            labels,
            config.soft_nms_sigma,
            config.score_threshold,
            config.max_detections,
        )
        for b in range(boxes.shape[0]):
            valid = keep[b] >= 0
            idx = keep[b][valid]
            results.append(
                {"boxes": boxes[b, idx], "scores": kept_scores[b][valid], "labels": labels[b, idx]}
            )
        return results

    for b in range(boxes.shape[0]):
        candidates = torch.nonzero(scores[b] > config.score_threshold).squeeze(1)
        keep = torchvision.ops.batched_nms(
            boxes[b, candidates],
            scores[b, candidates],
            labels[b, candidates],
            config.iou_threshold,
        )[: config.max_detections]
        idx = candidates[keep]
        results.append({"boxes": boxes[b, idx], "scores": scores[b, idx], "labels": labels[b, idx]})
    return results


def letterbox_to_original(boxes: Tensor, scale: float, original_size: tuple[int, int]) -> Tensor:
    """Map xyxy boxes from a letterboxed network input back to the original image.

    The letterbox resizes the image by ``scale`` keeping its aspect ratio and places it at
    the top-left of the input, padding on the right and bottom, so
    ``boxes_original = boxes_input / scale``, clipped to ``original_size = (H, W)``.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy in input pixels.

    Returns:
        ``Tensor[K, 4]`` xyxy in original-image pixels.
    """
    if scale <= 0:
        raise ValueError(f"letterbox scale must be positive, got {scale}")
    return clip_boxes(boxes / scale, original_size)
