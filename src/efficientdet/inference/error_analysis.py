"""What went wrong in a set of detections: matching, confusion matrix, PR curves, F1 thresholds.

Pure functions over numpy arrays (tensors are accepted and converted): nothing here draws or
writes files (:mod:`efficientdet.inference.error_report` does). Boxes are ``xyxy`` in absolute pixels
and labels are class indices ``0..C-1``, as everywhere in the library.

Matching, per image, at one IoU threshold (0.5 by default), in two greedy passes:

1. Detections, best score first, take the unmatched ground-truth box *of their own class*
   with the highest IoU at or above the threshold: a **true positive**. This is COCO's
   matching, so the true positives at any score threshold are the ones pycocotools counts
   for AP50. A detection left unmatched that covers a crowd region of its class (intersection
   over the detection's area at or above the threshold) is **ignored**, as COCO does.
2. The detections still unmatched, best score first, take the unmatched ground-truth box of
   *another* class with the highest IoU at or above the threshold: a **confusion**. A box a
   correct detection found is never taken by a confusion, however high its score.

Every other detection is a false positive of one kind: a **duplicate** (IoU at or above the
threshold with a box of its class that a higher-scoring detection already took), a
**localisation** error (best IoU with a box of its class in ``[0.1, threshold)``) or
**background** (nothing of its class nearby). Ground-truth boxes that neither pass matched
are **missed**.

The confusion matrix is ``[C + 1, C + 1]`` indexed ``[predicted, true]``; index ``C`` is
background: unmatched detections land in the background *column* (true background) and
missed boxes in the background *row* (predicted background).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import torch

__all__ = [
    "ERROR_KINDS",
    "ErrorAnalysis",
    "ImageMatch",
    "Outcome",
    "PRCurve",
    "ThresholdChoice",
    "analyze_errors",
    "best_f1_threshold",
    "box_iou",
    "confusion_matrix",
    "error_breakdown",
    "match_image",
    "most_missed_images",
    "pr_curve",
    "worst_false_positive_images",
]

IOU_THRESHOLD = 0.5
LOCALISATION_IOU = 0.1
# The score threshold used when no threshold gives a true positive (F1 is 0 at all of them):
# predict's default drawing threshold.
FALLBACK_THRESHOLD = 0.3


class Outcome(IntEnum):
    """What became of one detection (see the module docstring)."""

    TRUE_POSITIVE = 0
    CONFUSION = 1
    LOCALISATION = 2
    DUPLICATE = 3
    BACKGROUND = 4
    IGNORED = 5


# The kinds of error counted by :func:`error_breakdown`, in report order.
ERROR_KINDS = ("localisation", "confusion", "duplicate", "background", "missed")

_FALSE_POSITIVES = (Outcome.CONFUSION, Outcome.LOCALISATION, Outcome.DUPLICATE, Outcome.BACKGROUND)


def _array(values: Any, dtype: type, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array: np.ndarray = np.asarray(values if values is not None else [], dtype=dtype)
    return array.reshape(shape)


def _boxes(values: Any) -> np.ndarray:
    return _array(values, np.float64, (-1, 4))


def box_iou(a: Any, b: Any) -> np.ndarray:
    """Intersection over union of every pair.

    Args:
        a: ``[N, 4]`` xyxy boxes (array, tensor or lists).
        b: ``[M, 4]`` xyxy boxes.

    Returns:
        ``float64[N, M]``; 0 where the union is empty.
    """
    a, b = _boxes(a), _boxes(b)
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    size = np.clip(bottom_right - top_left, 0, None)
    return size[..., 0] * size[..., 1]


def _coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` share of each box of ``a`` that lies inside each box of ``b`` (COCO's crowd IoU)."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


@dataclass
class ImageMatch:
    """One image's detections matched to its ground truth.

    Attributes:
        gt_boxes: ``float64[G, 4]`` xyxy.
        gt_labels: ``int64[G]``.
        det_boxes: ``float64[D, 4]`` xyxy.
        det_scores: ``float64[D]``.
        det_labels: ``int64[D]``.
        outcome: ``int64[D]`` :class:`Outcome` of each detection.
        det_gt: ``int64[D]`` the ground-truth box a true positive or confusion took, else -1.
        gt_det: ``int64[G]`` the detection that took each box, -1 for a missed box.
        same_class_iou: ``float64[D]`` best IoU with any ground-truth box of the
            detection's class (0 when there is none).
        image_id: the image's id, when known.
        iou_threshold: the matching IoU used.
        localisation_iou: the lowest IoU of a localisation error used.
        ignore_boxes: ``float64[R, 4]`` the crowd regions used.
        ignore_labels: ``int64[R]`` their classes.
    """

    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray
    outcome: np.ndarray
    det_gt: np.ndarray
    gt_det: np.ndarray
    same_class_iou: np.ndarray
    image_id: int | None = None
    iou_threshold: float = IOU_THRESHOLD
    localisation_iou: float = LOCALISATION_IOU
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def missed(self) -> np.ndarray:
        """``bool[G]``: ground-truth boxes no detection took."""
        return self.gt_det < 0

    @property
    def false_positive(self) -> np.ndarray:
        """``bool[D]``: detections that are neither true positives nor ignored."""
        return np.isin(self.outcome, [int(o) for o in _FALSE_POSITIVES])

    def above(self, score_threshold: float) -> ImageMatch:
        """The image matched again, under the same rules, with the detections scoring
        ``>= score_threshold`` only."""
        keep = self.det_scores >= score_threshold
        return match_image(
            self.gt_boxes, self.gt_labels, self.det_boxes[keep], self.det_scores[keep],
            self.det_labels[keep], iou_threshold=self.iou_threshold,
            localisation_iou=self.localisation_iou, ignore_boxes=self.ignore_boxes,
            ignore_labels=self.ignore_labels, image_id=self.image_id,
        )


def match_image(
    gt_boxes: Any,
    gt_labels: Any,
    det_boxes: Any,
    det_scores: Any,
    det_labels: Any,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    localisation_iou: float = LOCALISATION_IOU,
    ignore_boxes: Any = None,
    ignore_labels: Any = None,
    image_id: int | None = None,
) -> ImageMatch:
    """Match one image's detections to its ground truth (two greedy passes by score).

    Args:
        gt_boxes: ``[G, 4]`` xyxy ground-truth boxes.
        gt_labels: ``[G]`` their classes.
        det_boxes: ``[D, 4]`` xyxy detections.
        det_scores: ``[D]`` their scores.
        det_labels: ``[D]`` their classes.
        iou_threshold: IoU at or above which a detection can take a box.
        localisation_iou: lowest same-class IoU of a localisation error.
        ignore_boxes: ``[R, 4]`` crowd regions; unmatched detections inside one of their class
            are ignored rather than counted as false positives.
        ignore_labels: ``[R]`` classes of ``ignore_boxes``.
        image_id: carried into the result.

    Returns:
        The :class:`ImageMatch`; ties in score keep the detections' order.
    """
    gt_b, gt_l = _boxes(gt_boxes), _array(gt_labels, np.int64)
    det_b, det_s, det_l = _boxes(det_boxes), _array(det_scores, np.float64), _array(det_labels, np.int64)
    ign_b, ign_l = _boxes(ignore_boxes), _array(ignore_labels, np.int64)
    if len(gt_b) != len(gt_l) or not len(det_b) == len(det_s) == len(det_l) or len(ign_b) != len(ign_l):
        raise ValueError(
            f"boxes and labels differ in length: {len(gt_b)} ground-truth boxes, {len(gt_l)} labels; "
            f"{len(det_b)} detections, {len(det_s)} scores, {len(det_l)} labels; "
            f"{len(ign_b)} ignore regions, {len(ign_l)} labels"
        )
    num_det, num_gt = len(det_b), len(gt_b)
    iou = box_iou(det_b, gt_b)
    same = det_l[:, None] == gt_l[None, :]
    inside_crowd = (_coverage(det_b, ign_b) >= iou_threshold) & (det_l[:, None] == ign_l[None, :])
    outcome = np.full(num_det, int(Outcome.BACKGROUND), dtype=np.int64)
    det_gt = np.full(num_det, -1, dtype=np.int64)
    gt_det = np.full(num_gt, -1, dtype=np.int64)
    order = np.argsort(-det_s, kind="stable")

    reachable = iou >= iou_threshold
    # Only detections that reach some box of the kind a pass looks for need the loop.
    reaches_same = (reachable & same).any(axis=1)
    reaches_other = (reachable & ~same).any(axis=1)

    def take(d: int, allowed: np.ndarray) -> bool:
        candidates = np.where(allowed & reachable[d] & (gt_det < 0), iou[d], -1.0)
        if candidates.max() < 0:
            return False
        g = int(np.argmax(candidates))
        det_gt[d], gt_det[g] = g, d
        return True

    for d in order:
        if reaches_same[d] and take(d, same[d]):
            outcome[d] = Outcome.TRUE_POSITIVE
        elif inside_crowd[d].any():
            outcome[d] = Outcome.IGNORED
    for d in order:
        if outcome[d] == Outcome.BACKGROUND and reaches_other[d] and take(d, ~same[d]):
            outcome[d] = Outcome.CONFUSION
    same_iou = np.where(same, iou, 0.0).max(axis=1) if num_gt else np.zeros(num_det)
    left = outcome == Outcome.BACKGROUND
    outcome[left & (same_iou >= iou_threshold)] = Outcome.DUPLICATE
    outcome[left & (same_iou >= localisation_iou) & (same_iou < iou_threshold)] = Outcome.LOCALISATION
    return ImageMatch(
        gt_b, gt_l, det_b, det_s, det_l, outcome, det_gt, gt_det, same_iou, image_id,
        iou_threshold, localisation_iou, ign_b, ign_l,
    )


@dataclass
class PRCurve:
    """Precision and recall at every distinct score threshold, highest threshold first.

    At ``thresholds[k]`` the detections kept are those scoring ``>= thresholds[k]``; ``tp[k]``
    and ``fp[k]`` count them. All arrays are ``[K]``, ``K`` the number of distinct scores.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_gt: int

    def __len__(self) -> int:
        return len(self.thresholds)

    @property
    def f1(self) -> np.ndarray:
        """``float64[K]`` F1 at each threshold, ``2 TP / (2 TP + FP + FN)``."""
        denominator = 2 * self.tp + self.fp + (self.num_gt - self.tp)
        return np.divide(
            2.0 * self.tp, denominator, out=np.zeros(len(self), dtype=np.float64),
            where=denominator > 0,
        )


def pr_curve(scores: Any, is_tp: Any, num_gt: int) -> PRCurve:
    """Precision-recall curve of detections already marked true or false positive.

    Args:
        scores: ``[N]`` detection scores (ignored detections left out).
        is_tp: ``[N]`` bool, whether each detection is a true positive.
        num_gt: ground-truth boxes the recall is relative to (recall is 0 when there are none).

    Returns:
        A :class:`PRCurve` with one point per distinct score (ties form one point).
    """
    s = _array(scores, np.float64)
    hits = _array(is_tp, bool)
    if len(s) != len(hits):
        raise ValueError(f"{len(s)} scores but {len(hits)} true-positive flags")
    order = np.argsort(-s, kind="stable")
    s, hits = s[order], hits[order]
    tp = np.cumsum(hits).astype(np.int64)
    fp = np.cumsum(~hits).astype(np.int64)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    tp, fp, thresholds = tp[last], fp[last], s[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_gt if num_gt > 0 else np.zeros(len(tp))
    return PRCurve(thresholds, precision.astype(np.float64), recall.astype(np.float64), tp, fp, num_gt)


@dataclass
class ThresholdChoice:
    """The score threshold with the best F1 and the counts at it.

    ``threshold`` is ``None`` when no threshold gives a true positive (F1 is 0 everywhere);
    the counts are then those of keeping nothing.
    """

    threshold: float | None
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold, "precision": self.precision, "recall": self.recall,
            "f1": self.f1, "tp": self.tp, "fp": self.fp, "fn": self.fn,
        }


def best_f1_threshold(curve: PRCurve) -> ThresholdChoice:
    """The point of ``curve`` with the highest F1; among equal F1 the highest threshold."""
    f1 = curve.f1
    if len(curve) == 0 or f1.max() <= 0:
        return ThresholdChoice(None, 0.0, 0.0, 0.0, 0, 0, curve.num_gt)
    k = int(np.argmax(f1))
    tp, fp = int(curve.tp[k]), int(curve.fp[k])
    return ThresholdChoice(
        float(curve.thresholds[k]), float(curve.precision[k]), float(curve.recall[k]),
        float(f1[k]), tp, fp, curve.num_gt - tp,
    )


def confusion_matrix(matches: Sequence[ImageMatch], num_classes: int) -> np.ndarray:
    """Counts of ``[predicted, true]`` pairs, background at index ``num_classes``.

    True positives and confusions count at ``[detection class, box class]``; the other false
    positives at ``[detection class, C]``; missed boxes at ``[C, box class]``; ignored
    detections nowhere.

    Returns:
        ``int64[C + 1, C + 1]``.
    """
    c = num_classes
    matrix = np.zeros((c + 1, c + 1), dtype=np.int64)
    for m in matches:
        matched = m.det_gt >= 0
        np.add.at(matrix, (m.det_labels[matched], m.gt_labels[m.det_gt[matched]]), 1)
        matrix[:, c] += np.bincount(m.det_labels[m.false_positive & ~matched], minlength=c + 1)
        matrix[c, :] += np.bincount(m.gt_labels[m.missed], minlength=c + 1)
    return matrix


def error_breakdown(matches: Sequence[ImageMatch]) -> dict[str, int]:
    """Counts of each kind in :data:`ERROR_KINDS` over ``matches``.

    Every false-positive detection counts once under its kind; every missed box counts once
    under ``"missed"`` (a box taken by a confusion is the confusion's, not a miss).
    """
    counts = dict.fromkeys(ERROR_KINDS, 0)
    kinds = {
        "localisation": Outcome.LOCALISATION, "confusion": Outcome.CONFUSION,
        "duplicate": Outcome.DUPLICATE, "background": Outcome.BACKGROUND,
    }
    for m in matches:
        for name, outcome in kinds.items():
            counts[name] += int((m.outcome == outcome).sum())
        counts["missed"] += int(m.missed.sum())
    return counts


def worst_false_positive_images(matches: Sequence[ImageMatch], count: int = 16) -> list[int]:
    """Indices into ``matches`` of the images whose best-scoring false positive scores highest.

    Images without a false positive are left out; at most ``count`` indices, worst first.
    """
    worst = [
        (-float(m.det_scores[m.false_positive].max()), i)
        for i, m in enumerate(matches) if m.false_positive.any()
    ]
    return [i for _, i in sorted(worst)[:count]]


def most_missed_images(matches: Sequence[ImageMatch], count: int = 16) -> list[int]:
    """Indices into ``matches`` of the images with the most missed boxes, most first.

    Images without a miss are left out; at most ``count`` indices; ties keep the image order.
    """
    missed = [(-int(m.missed.sum()), i) for i, m in enumerate(matches) if m.missed.any()]
    return [i for _, i in sorted(missed)[:count]]


@dataclass
class ErrorAnalysis:
    """Everything :func:`analyze_errors` found.

    Attributes:
        class_names: ``C`` names by label.
        iou_threshold: the matching IoU.
        score_threshold: the threshold of ``confusion``, ``errors`` and ``matches``: the
            overall F1-best one, or :data:`FALLBACK_THRESHOLD` when ``overall.threshold``
            is ``None``.
        overall: the F1-best threshold over all classes pooled (``overall_curve``).
        per_class: the F1-best threshold of each class (``curves``).
        curves: ``C`` per-class precision-recall curves over all detections.
        overall_curve: the curve of all detections pooled.
        num_gt: ``int64[C]`` ground-truth boxes per class.
        confusion: ``int64[C + 1, C + 1]`` ``[predicted, true]`` at ``score_threshold``.
        errors: :func:`error_breakdown` at ``score_threshold``.
        matches: every image matched with the detections at ``score_threshold``.
    """

    class_names: list[str]
    iou_threshold: float
    score_threshold: float
    overall: ThresholdChoice
    per_class: list[ThresholdChoice]
    curves: list[PRCurve]
    overall_curve: PRCurve
    num_gt: np.ndarray
    confusion: np.ndarray
    errors: dict[str, int]
    matches: list[ImageMatch]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def thresholds_dict(self) -> dict[str, Any]:
        """The F1-best thresholds as JSON-ready data (``thresholds.json``)."""
        per_class = {}
        for name, choice, n in zip(self.class_names, self.per_class, self.num_gt, strict=True):
            per_class[name] = {**choice.to_dict(), "num_gt": int(n)}
        return {
            "iou_threshold": self.iou_threshold,
            "overall": {**self.overall.to_dict(), "num_gt": int(self.num_gt.sum())},
            "per_class": per_class,
        }

    def summary_dict(self) -> dict[str, Any]:
        """Error counts at ``score_threshold`` as JSON-ready data (part of ``metrics.json``)."""
        tp, fp, fn = class_counts(self.confusion)
        return {
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "score_threshold_is_fallback": self.overall.threshold is None,
            "errors": dict(self.errors),
            "per_class": {
                name: {"tp": int(tp[k]), "fp": int(fp[k]), "fn": int(fn[k])}
                for k, name in enumerate(self.class_names)
            },
        }

    def top_confusions(self, count: int = 5) -> list[tuple[int, int, int]]:
        """``(true label, predicted label, boxes)`` of the largest class confusions, largest first."""
        c = self.num_classes
        pairs = [
            (int(self.confusion[p, t]), t, p)
            for t in range(c) for p in range(c) if p != t and self.confusion[p, t] > 0
        ]
        pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
        return [(t, p, n) for n, t, p in pairs[:count]]

    def most_missed_classes(self, count: int = 5) -> list[tuple[int, int, int]]:
        """``(label, missed boxes, boxes)`` of the classes with the most misses, most first."""
        missed = self.confusion[self.num_classes, : self.num_classes]
        order = sorted(range(self.num_classes), key=lambda k: (-int(missed[k]), k))
        return [(k, int(missed[k]), int(self.num_gt[k])) for k in order[:count] if missed[k] > 0]

    def summary_line(self) -> str:
        """One line: the overall F1-best threshold and the error shares at it."""
        o = self.overall
        head = (
            f"F1-best score threshold {o.threshold:.3f}: precision {o.precision:.3f}, "
            f"recall {o.recall:.3f}, F1 {o.f1:.3f}"
            if o.threshold is not None
            else f"no score threshold gives a true positive; errors at {self.score_threshold:.3f}"
        )
        total = sum(self.errors.values())
        shares = ", ".join(
            f"{kind} {n / total:.0%}" for kind, n in self.errors.items() if total and n
        )
        return f"{head}; {total} errors" + (f" ({shares})" if shares else "")


def class_counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)``, each ``int64[C]``, from a ``[C + 1, C + 1]`` ``[predicted, true]`` matrix.

    False positives are counted by predicted class (confusions included), false negatives
    by true class (boxes taken by a confusion included).
    """
    c = confusion.shape[0] - 1
    tp = np.diag(confusion)[:c].copy()
    fp = confusion[:c, :].sum(axis=1) - tp
    fn = confusion[:, :c].sum(axis=0) - tp
    return tp, fp, fn


def analyze_errors(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    fallback_threshold: float = FALLBACK_THRESHOLD,
) -> ErrorAnalysis:
    """Match, build the PR curves, pick the F1-best thresholds and count the errors at the best.

    Args:
        ground_truth: per image ``{"boxes": [G, 4], "labels": [G]}``, optionally with
            ``"ignore_boxes": [R, 4]``, ``"ignore_labels": [R]`` (crowd regions) and
            ``"image_id"``.
        detections: per image, aligned with ``ground_truth``, ``{"boxes": [D, 4],
            "scores": [D], "labels": [D]}`` (every detection, not thresholded).
        class_names: ``C`` names by label.
        iou_threshold: matching IoU (0.5: the curves are those behind AP50).
        fallback_threshold: the score threshold of the confusion matrix when no threshold
            gives a true positive.

    Returns:
        The :class:`ErrorAnalysis`.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists")
    c = len(class_names)
    full = []
    for gt, det in zip(ground_truth, detections, strict=True):
        image_id = gt.get("image_id")
        full.append(match_image(
            gt["boxes"], gt["labels"], det["boxes"], det["scores"], det["labels"],
            iou_threshold=iou_threshold, ignore_boxes=gt.get("ignore_boxes"),
            ignore_labels=gt.get("ignore_labels"),
            image_id=int(image_id) if image_id is not None else None,
        ))
    for m in full:
        bad = np.concatenate([m.gt_labels, m.det_labels])
        if bad.size and (bad.min() < 0 or bad.max() >= c):
            raise ValueError(f"image {m.image_id}: labels outside 0..{c - 1}: {sorted(set(bad.tolist()))}")
    num_gt = np.bincount(np.concatenate([m.gt_labels for m in full] or [np.zeros(0, np.int64)]), minlength=c)
    counted = [m.outcome != Outcome.IGNORED for m in full]
    scores = np.concatenate([m.det_scores[k] for m, k in zip(full, counted, strict=True)] or [np.zeros(0)])
    labels = np.concatenate(
        [m.det_labels[k] for m, k in zip(full, counted, strict=True)] or [np.zeros(0, np.int64)]
    )
    hits = np.concatenate(
        [m.outcome[k] == Outcome.TRUE_POSITIVE for m, k in zip(full, counted, strict=True)]
        or [np.zeros(0, bool)]
    )
    curves = [pr_curve(scores[labels == k], hits[labels == k], int(num_gt[k])) for k in range(c)]
    overall_curve = pr_curve(scores, hits, int(num_gt.sum()))
    overall = best_f1_threshold(overall_curve)
    threshold = overall.threshold if overall.threshold is not None else fallback_threshold
    matches = [m.above(threshold) for m in full]
    return ErrorAnalysis(
        class_names=list(class_names),
        iou_threshold=iou_threshold,
        score_threshold=threshold,
        overall=overall,
        per_class=[best_f1_threshold(curve) for curve in curves],
        curves=curves,
        overall_curve=overall_curve,
        num_gt=num_gt.astype(np.int64),
        confusion=confusion_matrix(matches, c),
        errors=error_breakdown(matches),
        matches=matches,
    )
