"""Merging detections from several runs over one image: class-aware NMS and weighted box fusion.

Tiled inference and test-time augmentation both end with several sets of detections for the
same image, in the same pixels. :func:`merge_detections` pools them and removes the
duplicates, either by class-aware NMS (keep the best box of each overlapping group) or by
:func:`weighted_boxes_fusion` (Solovyev et al., 2019: average each group's boxes, weighted
by their scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import box_iou
from .postprocess import class_aware_nms

MERGE_METHODS = ("nms", "wbf")

Detection = dict[str, Tensor]


def _check_detection(det: Detection, index: int) -> tuple[Tensor, Tensor, Tensor]:
    try:
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    except KeyError as err:
        raise ValueError(f"detections {index} lack {err}; expected boxes, scores, labels") from err
    boxes = boxes.reshape(-1, 4).float()
    scores, labels = scores.reshape(-1).float(), labels.reshape(-1).long()
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"detections {index}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    return boxes, scores, labels


def weighted_boxes_fusion(
    detections: Sequence[Detection],
    *,
    iou_threshold: float = 0.55,
    weights: Sequence[float] | None = None,
    skip_score: float = 0.0,
    max_detections: int | None = None,
    score_average: str = "runs",
) -> Detection:
    """Fuse the detections of several runs (models, augmentations, tiles) over one image.

    Boxes of all runs are visited best score first, class by class. A box joins the first
    cluster of its class whose fused box it overlaps with IoU above ``iou_threshold``, or
    starts a new cluster. A cluster's box is the score-weighted mean of its members'
    coordinates; its score is the sum of its members' (run-weighted) scores divided by the
    total run weight, i.e. the mean score over the runs, so a box that only one of ``N``
    equal runs found keeps ``1/N`` of its score (``score_average="runs"``, for augmentations
    that all see the whole image). With ``score_average="members"`` the sum is divided by the
    weight of the cluster's own members instead, the mean score of the boxes fused (for tiles,
    where an object is visible in only some of the runs).

    Args:
        detections: one dict per run, ``{"boxes": Tensor[K_i, 4] xyxy, "scores":
            Tensor[K_i], "labels": Tensor[K_i] int64}``, all in the same pixels.
        iou_threshold: IoU with a cluster's fused box above which a box joins it.
        weights: one weight per run (default 1 each); scores are multiplied by it.
        skip_score: boxes scoring below this are dropped before fusion.
        max_detections: keep at most this many fused boxes (best first); None keeps all.
        score_average: ``"runs"`` or ``"members"`` (above).

    Returns:
        ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K] int64}``, best
        score first.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if score_average not in ("runs", "members"):
        raise ValueError(f"score_average must be 'runs' or 'members', got {score_average!r}")
    weights = _run_weights(weights, len(detections))
    total_weight = sum(weights)
    pooled = _pool_runs(detections, weights, skip_score)
    if pooled is None:
        return _empty()
    boxes, scores, labels, run_weights = pooled

    out_boxes, out_scores, out_labels = [], [], []
    for label in labels.unique().tolist():
        mask = labels == label
        order = scores[mask].argsort(descending=True, stable=True)
        fused, score_sums, weight_sums = _cluster_boxes(
            boxes[mask][order], scores[mask][order], run_weights[mask][order], iou_threshold
        )
        if not fused:
            continue
        out_boxes.append(torch.stack(fused))
        divisor = (
            torch.tensor(weight_sums, dtype=torch.float64)
            if score_average == "members"
            else torch.tensor(total_weight, dtype=torch.float64)
        )
        out_scores.append(torch.tensor(score_sums, dtype=torch.float64) / divisor)
        out_labels.append(torch.full((len(fused),), label, dtype=torch.int64))
    if not out_boxes:
        return _empty()
    result_boxes = torch.cat(out_boxes).float()
    result_scores = torch.cat(out_scores).float()
    result_labels = torch.cat(out_labels)
    order = result_scores.argsort(descending=True, stable=True)
    if max_detections is not None:
        order = order[:max_detections]
    return {"boxes": result_boxes[order], "scores": result_scores[order], "labels": result_labels[order]}


def _run_weights(weights: Sequence[float] | None, runs: int) -> list[float]:
    """The checked weight of each of ``runs`` runs (default 1 each)."""
    checked = [1.0] * runs if weights is None else [float(w) for w in weights]
    if len(checked) != runs:
        raise ValueError(f"{len(checked)} weights for {runs} sets of detections")
    if any(w <= 0 for w in checked):
        raise ValueError(f"weights must be positive, got {checked}")
    return checked


def _pool_runs(
    detections: Sequence[Detection], weights: Sequence[float], skip_score: float
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Every run's boxes scoring ``skip_score`` or more, on the CPU in float64: boxes
    ``[N, 4]``, run-weighted scores ``[N]``, labels ``[N]`` and run weights ``[N]``; None
    when there are no runs."""
    pooled_boxes, pooled_scores, pooled_labels, pooled_weights = [], [], [], []
    for i, (det, weight) in enumerate(zip(detections, weights, strict=True)):
        boxes, scores, labels = _check_detection(det, i)
        keep = scores >= skip_score
        pooled_boxes.append(boxes[keep].cpu())
        pooled_scores.append(scores[keep].cpu() * weight)
        pooled_labels.append(labels[keep].cpu())
        pooled_weights.append(torch.full((int(keep.sum()),), weight, dtype=torch.float64))
    if not pooled_boxes:
        return None
    return (
        torch.cat(pooled_boxes).double(),
        torch.cat(pooled_scores).double(),
        torch.cat(pooled_labels),
        torch.cat(pooled_weights),
    )


def _cluster_boxes(
    boxes: Tensor, scores: Tensor, run_weights: Tensor, iou_threshold: float
) -> tuple[list[Tensor], list[float], list[float]]:
    """Cluster one class's boxes, given best score first: each joins the first cluster whose
    fused box it overlaps with IoU above ``iou_threshold``, or starts one. Returns per
    cluster the fused box (the score-weighted mean), the sum of the scores and the run
    weight of the members."""
    fused: list[Tensor] = []  # current fused box per cluster
    box_sums: list[Tensor] = []  # score-weighted coordinate sums
    score_sums: list[float] = []
    weight_sums: list[float] = []  # run weight of the members
    for box, score, weight in zip(boxes, scores.tolist(), run_weights.tolist(), strict=True):
        cluster = -1
        if fused:
            iou = box_iou(box.unsqueeze(0), torch.stack(fused))[0]
            best = int(iou.argmax())
            if float(iou[best]) > iou_threshold:
                cluster = best
        if cluster < 0:
            fused.append(box.clone())
            box_sums.append(box * score)
            score_sums.append(score)
            weight_sums.append(weight)
            continue
        box_sums[cluster] = box_sums[cluster] + box * score
        score_sums[cluster] += score
        weight_sums[cluster] += weight
        if score_sums[cluster] > 0:
            fused[cluster] = box_sums[cluster] / score_sums[cluster]
    return fused, score_sums, weight_sums


def _empty() -> Detection:
    return {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }


def merge_detections(
    detections: Sequence[Detection],
    *,
    method: str = "nms",
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
    weights: Sequence[float] | None = None,
    score_average: str = "runs",
) -> Detection:
    """Pool several sets of detections of one image and drop the duplicates.

    Args:
        detections: per run ``{"boxes": Tensor[K_i, 4] xyxy, "scores": Tensor[K_i],
            "labels": Tensor[K_i] int64}`` in the same pixels.
        method: ``"nms"``: class-aware NMS over the pooled boxes (each kept box is one of the
            inputs, with its score); ``"wbf"``: :func:`weighted_boxes_fusion`.
        iou_threshold: NMS drops a box whose IoU with a better box of its class is above
            this; WBF joins a box to a cluster above it.
        max_detections: keep at most this many, best first; None keeps all.
        weights: per-run weights (WBF only).
        score_average: WBF's score divisor, ``"runs"`` or ``"members"``
            (:func:`weighted_boxes_fusion`).

    Returns:
        ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K] int64}``, best first.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method {method!r} is not one of {', '.join(map(repr, MERGE_METHODS))}")
    if method == "wbf":
        return weighted_boxes_fusion(
            detections, iou_threshold=iou_threshold, weights=weights,
            max_detections=max_detections, score_average=score_average,
        )
    if weights is not None:
        raise ValueError("per-run weights apply to weighted box fusion (method='wbf') only")
    checked = [_check_detection(det, i) for i, det in enumerate(detections)]
    if not checked:
        return _empty()
    boxes = torch.cat([c[0].cpu() for c in checked])
    scores = torch.cat([c[1].cpu() for c in checked])
    labels = torch.cat([c[2].cpu() for c in checked])
    keep = class_aware_nms(boxes, scores, labels, iou_threshold)
    order = scores[keep].argsort(descending=True, stable=True)
    keep = keep[order]
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
