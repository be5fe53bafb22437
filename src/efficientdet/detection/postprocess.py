"""From raw head outputs to detections (docs/model-reference.md, section 5).

Per image: take the ``pre_nms_top_k`` best (anchor, class) pairs over all levels with one
``topk`` (never a full sort), drop those at or below ``score_threshold``, decode only those
candidates, clip them to the input, run class-aware NMS (hard, or Gaussian soft-NMS as in
the official evaluation) and keep at most ``max_detections``. Labels listed in
``suppressed_labels`` (class slots with no class behind them, such as COCO's ten unused ids in
the published 90-way heads) have their logits set to ``-inf`` first, so they never take a
top-k place, never suppress a box in NMS and never come out. Boxes come out in input pixels; :func:`efficientdet.detection.transform.scale_boxes_to_original` maps them back to the
original image.
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
        suppressed_labels: labels that are never detected (sorted, no repeats): their logits
            are set to ``-inf`` before the top-k (:func:`suppress_labels`).
    """

    score_threshold: float = 0.001
    pre_nms_top_k: int = 5000
    max_detections: int = 100
    nms: str = "hard"
    iou_threshold: float = 0.5
    soft_nms_sigma: float = 0.5
    suppressed_labels: tuple[int, ...] = ()

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
        labels = self.suppressed_labels
        if any(type(label) is not int or label < 0 for label in labels):
            raise ValueError(f"suppressed_labels must be labels >= 0, got {labels}")
        if list(labels) != sorted(set(labels)):
            raise ValueError(f"suppressed_labels must be sorted without repeats, got {labels}")


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


# Class-aware NMS runs on groups of consecutive classes of about this many boxes: one NMS call
# over n boxes costs ~n^2 IoUs, and every call has a fixed overhead.
NMS_GROUP_BOXES = 256


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each class; the result of ``torchvision.ops.batched_nms``.

    Boxes are sorted once by (class, score). Consecutive classes are grouped into runs of
    about :data:`NMS_GROUP_BOXES` boxes, and each run goes through one ``torchvision.ops.nms``
    with its classes shifted apart (so they cannot overlap). For D0's 5000 candidates over 90
    classes that takes 5.1 ms against 8.8 ms for torchvision's ``batched_nms``, which runs one
    ``nms`` per class, each selected with a mask (``benchmarks/README.md``).

    Args:
        boxes: ``Tensor[K, 4]`` xyxy.
        scores: ``Tensor[K]``.
        labels: ``Tensor[K]`` int64 classes.
        iou_threshold: a box is dropped when its IoU with a better box of its class is above this.

    Returns:
        ``Tensor[D]`` int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    order = order[labels[order].argsort(stable=True)]  # by class, best first within each
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    span = float(boxes.max() - boxes.min().clamp(max=0)) + 1.0  # wider than any box extent
    keep, start, end = [], 0, 0
    counts = torch.unique_consecutive(labels, return_counts=True)[1].tolist()
    for i, count in enumerate(counts):
        end += count
        if end - start < NMS_GROUP_BOXES and i + 1 < len(counts):
            continue
        group = labels[start:end]
        shift = ((group - group[0]) * span).to(boxes.dtype).unsqueeze(1)
        kept_here = torchvision.ops.nms(boxes[start:end] + shift, scores[start:end], iou_threshold)
        keep.append(kept_here + start)
        start = end
    kept = torch.cat(keep)
    kept = kept[scores[kept].argsort(descending=True)]
    return order[kept]


# best_kept_nms runs NMS on the best this-many candidates first (a trained Lite0's 100th kept
# box ranked 881st of its 5000).
NMS_FIRST_CANDIDATES = 1024


def best_kept_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_kept: int
) -> Tensor:
    """``class_aware_nms(...)[:max_kept]``, without running NMS on candidates that cannot
    change it.

    Greedy NMS keeps a box when no better kept box of its class overlaps it, so the boxes
    kept among the ``n`` best candidates depend on those ``n`` alone. NMS therefore runs on
    the best :data:`NMS_FIRST_CANDIDATES`, then four times as many, until ``max_kept`` are
    kept or all candidates are in: the best ``max_kept`` of those are the answer. On a
    Lite0 trained on the digit scenes (5000 candidates, 1379 kept) that is 1.3 ms instead of
    4.9 ms, with the same boxes.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy; scores: ``Tensor[K]``; labels: ``Tensor[K]`` int64.
        iou_threshold: as in :func:`class_aware_nms`.
        max_kept: how many to return at most.

    Returns:
        ``Tensor[D]`` int64 indices into the candidates, by decreasing score, ``D <= max_kept``.
    """
    order = scores.argsort(descending=True, stable=True)
    count = NMS_FIRST_CANDIDATES
    while True:
        best = order[:count]
        keep = class_aware_nms(boxes[best], scores[best], labels[best], iou_threshold)
        if keep.shape[0] >= max_kept or count >= order.shape[0]:
            return best[keep[:max_kept]]
        count *= 4


def select_top_k(
    class_outputs: Sequence[Tensor], num_classes: int, k: int, *, traceable: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (anchor, class) pairs of each image over all levels.

    Two exact stages keep this cheap for ~49k anchors x 90 classes. Every pair in the overall
    top ``k`` belongs to an anchor whose best class is among the top ``k`` anchors (fewer than
    ``k`` pairs beat it), and it scores at least ``t``, the lowest best-class logit of those
    anchors; at least ``k`` pairs reach ``t`` (the anchors' best ones). So the top ``k``
    anchors by best-class logit are found first, then:

    * by default, the pairs scoring at least ``t`` are picked out of all logits with one
      comparison (a few more than ``k`` of them unless many scores tie) and the top ``k``
      taken among them;
    * with ``traceable=True`` (fixed shapes, for export), the ``C`` logits of each top anchor
      are gathered and the top ``k`` taken among those ``k * C``.

    The outputs are read in their own layout: NCHW ones as ``[A, C, HW]`` per level, never
    permuted; channels-last ones (what the detector gives on CPU) as ``[HW * A, C]`` views,
    already in anchor order, where each top anchor's ``C`` logits are one contiguous row and
    the gather is the faster second stage (used for them unless ``traceable``).

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` logits.
        num_classes: C.
        k: candidates per image (capped at ``N * C``).
        traceable: no data-dependent shapes (``torch.export`` and ONNX).

    Returns:
        ``scores`` ``Tensor[B, k]`` (sigmoid), ``anchor_index`` ``Tensor[B, k]`` into the
        anchor order of :func:`efficientdet.detection.anchors.generate_anchors`, and ``labels``
        ``Tensor[B, k]`` (int64, ``0..C-1``); in no particular order.
    """
    for i, out in enumerate(class_outputs):
        if out.dim() != 4 or out.shape[1] % num_classes:
            raise ValueError(
                f"class output of level index {i} has shape {tuple(out.shape)}; expected "
                f"[B, A * {num_classes}, H, W]"
            )
    nhwc = all(out.is_contiguous(memory_format=torch.channels_last) for out in class_outputs)
    if nhwc and not traceable:
        return _select_top_k_anchor_major(class_outputs, num_classes, k)
    levels = []
    for out in class_outputs:
        batch, channels, height, width = out.shape
        levels.append(out.reshape(batch, channels // num_classes, num_classes, height * width))
    # Best class logit per anchor, in anchor order (location-major, anchor-minor).
    anchor_max = torch.cat(
        [v.amax(dim=2).transpose(1, 2).reshape(v.shape[0], -1) for v in levels], dim=1
    )  # [B, N]
    batch, num_anchors = anchor_max.shape
    top = anchor_max.topk(min(k, num_anchors), dim=1, sorted=False)  # [B, Ka]
    # Every logit in one row per image, each level in its own [A, C, HW] layout.
    all_logits = torch.cat([v.reshape(batch, -1) for v in levels], dim=1)  # [B, N * C]
    layout = _LevelLayout(levels, num_classes, anchor_max.device)
    if not traceable and k < num_anchors:
        picked = _select_above(all_logits, top.values, k)
        if picked is not None:
            top_logits, position = picked
            anchor_index, labels = layout.decode(position)
            return top_logits.float().sigmoid(), anchor_index, labels

    # The C logits of each top anchor, from one gather.
    top_anchor = top.indices
    level = layout.level_of_anchor(top_anchor)
    local = top_anchor - layout.anchor_starts[level]
    per_location, hw = layout.per_location[level], layout.hw[level]
    location, anchor = local // per_location, local % per_location
    first = layout.logit_starts[level] + anchor * num_classes * hw + location
    class_offsets = torch.arange(num_classes, device=top_anchor.device)
    flat_index = first.unsqueeze(-1) + class_offsets * hw.unsqueeze(-1)  # [B, Ka, C]
    candidates = all_logits.gather(1, flat_index.reshape(batch, -1))
    top_logits, index = candidates.topk(min(k, candidates.shape[1]), dim=1, sorted=False)
    anchor_index = top_anchor.gather(1, index // num_classes)
    return top_logits.float().sigmoid(), anchor_index, index % num_classes


def _select_top_k_anchor_major(
    class_outputs: Sequence[Tensor], num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_top_k` for outputs whose memory is already in anchor order
    (channels-last): each level is read as a ``Tensor[B, H * W * A, C]`` view, nothing is
    copied, and the ``C`` logits of each top anchor are one contiguous row to gather (faster
    here than the threshold-and-compare stage, which scans every logit)."""
    views = [out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, num_classes) for out in class_outputs]
    anchor_max = torch.cat([v.amax(dim=2) for v in views], dim=1)  # [B, N]
    batch, num_anchors = anchor_max.shape
    top = anchor_max.topk(min(k, num_anchors), dim=1, sorted=False)  # [B, Ka]
    ends = torch.tensor([v.shape[1] for v in views], device=anchor_max.device).cumsum(0)
    level = torch.bucketize(top.indices, ends, right=True)  # [B, Ka]
    candidates = views[0].new_empty((batch, top.indices.shape[1], num_classes))
    start = 0
    for i, view in enumerate(views):
        rows, cols = (level == i).nonzero(as_tuple=True)
        candidates[rows, cols] = view[rows, top.indices[rows, cols] - start]
        start += view.shape[1]
    flat = candidates.reshape(batch, -1)
    # The top k of the Ka * C candidates all reach the lowest top-anchor logit (see above):
    # keeping only those first makes the final top-k small (5000 of ~5000 instead of 450k).
    picked = _select_above(flat, top.values, k) if k < flat.shape[1] else None
    if picked is None:
        top_logits, index = flat.topk(min(k, flat.shape[1]), dim=1, sorted=False)
    else:
        top_logits, index = picked
    anchor_index = top.indices.gather(1, index // num_classes)
    return top_logits.float().sigmoid(), anchor_index, index % num_classes


class _LevelLayout:
    """Where each level's logits and anchors start in the concatenated rows of
    :func:`select_top_k`, and how to map a logit position back to (anchor, class)."""

    def __init__(self, levels: list[Tensor], num_classes: int, device: torch.device) -> None:
        anchors = [v.shape[1] * v.shape[3] for v in levels]  # per level: A * HW
        self.num_classes = num_classes
        self.anchor_starts = torch.tensor(
            [sum(anchors[:i]) for i in range(len(levels))], device=device
        )
        self.logit_starts = self.anchor_starts * num_classes
        self.per_location = torch.tensor([v.shape[1] for v in levels], device=device)
        self.hw = torch.tensor([v.shape[3] for v in levels], device=device)

    def level_of_anchor(self, anchor_index: Tensor) -> Tensor:
        return (anchor_index.unsqueeze(-1) >= self.anchor_starts[1:]).sum(-1)

    def decode(self, position: Tensor) -> tuple[Tensor, Tensor]:
        """Logit positions (any shape) -> anchor indices and class labels (same shape)."""
        level = (position.unsqueeze(-1) >= self.logit_starts[1:]).sum(-1)
        local = position - self.logit_starts[level]
        hw = self.hw[level]
        anchor = local // (self.num_classes * hw)
        label = (local // hw) % self.num_classes
        location = local % hw
        return self.anchor_starts[level] + location * self.per_location[level] + anchor, label


def _select_above(
    all_logits: Tensor, top_anchor_logits: Tensor, k: int
) -> tuple[Tensor, Tensor] | None:
    """The top ``k`` of each row of ``all_logits: Tensor[B, T]`` among the logits at least the
    row's lowest ``top_anchor_logits: Tensor[B, Ka]``, and their positions in the row.

    ``None`` when a row has fewer than ``k`` such logits, which only NaNs can cause.
    """
    batch = all_logits.shape[0]
    threshold = top_anchor_logits.amin(dim=1, keepdim=True)
    rows, positions = (all_logits >= threshold).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=batch)
    wanted = min(k, all_logits.shape[1])
    if int(counts.min()) < wanted:
        return None
    width = int(counts.max())
    rank = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    values = all_logits.new_full((batch, width), -math.inf)
    values[rows, rank] = all_logits[rows, positions]
    where = positions.new_zeros((batch, width))
    where[rows, rank] = positions
    top_logits, index = values.topk(wanted, dim=1, sorted=False)
    return top_logits, where.gather(1, index)


def suppress_labels(
    class_outputs: Sequence[Tensor], num_classes: int, labels: Sequence[int]
) -> list[Tensor]:
    """The class logits with those of ``labels`` set to ``-inf`` at every anchor and location.

    A sigmoid score of 0 is at or below every score threshold, so a suppressed label is never
    picked while any other candidate remains and is dropped when it is.

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` logits (channel ``a * C + c``
            is class ``c`` of anchor ``a``); not modified.
        num_classes: C.
        labels: labels ``0..C-1`` to suppress.

    Returns:
        Per level a copy in the input's layout and memory format (channels-last stays so).
    """
    if not labels:
        return list(class_outputs)
    if min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"suppressed labels {list(labels)} are not all in 0..{num_classes - 1}")
    out = []
    for level in class_outputs:
        # An added 0 / -inf per channel: traceable (the ONNX export runs this too).
        mask = level.new_zeros((level.shape[1] // num_classes, num_classes))
        mask[:, list(labels)] = -math.inf
        out.append(level + mask.reshape(1, -1, 1, 1))
    return out


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
        "labels": Tensor[K] int64 in 0..C-1}``, by decreasing score, ``K <= max_detections``;
        never one of ``config.suppressed_labels``.
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
    class_outputs = suppress_labels(class_outputs, num_classes, config.suppressed_labels)

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
        keep = best_kept_nms(
            boxes[b, candidates],
            scores[b, candidates],
            labels[b, candidates],
            config.iou_threshold,
            config.max_detections,
        )
        idx = candidates[keep]
        results.append({"boxes": boxes[b, idx], "scores": scores[b, idx], "labels": labels[b, idx]})
    return results
