"""IoU matching of anchors to ground-truth boxes (docs/model-reference.md, section 3).

The official recipe: an anchor whose best IoU with any ground-truth box is at least 0.5 is
positive for that box, anything lower is negative, and every ground-truth box is also
matched to the anchor(s) it overlaps most, whatever that IoU is. An optional band between
a lower and an upper threshold marks anchors to ignore in the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .boxes import box_iou

# Sentinels written in place of a ground-truth index.
BELOW_LOW_THRESHOLD = -1  # negative anchor: background
BETWEEN_THRESHOLDS = -2  # ignored anchor: contributes nothing to the loss


class Matcher:
    """Assign every anchor a ground-truth index or a sentinel from an IoU matrix.

    Args:
        high_threshold: anchors with best IoU ``>= high_threshold`` are positive.
        low_threshold: anchors with best IoU ``< low_threshold`` are negative
            (:data:`BELOW_LOW_THRESHOLD`); those in ``[low, high)`` are ignored
            (:data:`BETWEEN_THRESHOLDS`). Defaults to ``high_threshold``: no ignore band, as
            in the official recipe.
        force_match: match each ground-truth box to the anchor with its highest IoU even
            below ``high_threshold``: as the official ``ArgMaxMatcher``, one anchor per box
            (the first on ties), and an anchor forced by several boxes takes the first of
            them. A box that overlaps no anchor at all (IoU 0 everywhere) forces nothing.
        force_match_ties: force-match every anchor tied at a box's best IoU instead of one
            (torchvision's ``allow_low_quality_matches``); an anchor forced by several boxes
            then takes the one it overlaps most.
    """

    def __init__(
        self,
        high_threshold: float = 0.5,
        low_threshold: float | None = None,
        force_match: bool = True,
        force_match_ties: bool = False,
    ) -> None:
        if low_threshold is None:
            low_threshold = high_threshold
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise ValueError(
                "thresholds must satisfy 0 <= low_threshold <= high_threshold <= 1, got "
                f"low_threshold={low_threshold}, high_threshold={high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.force_match = force_match
        self.force_match_ties = force_match_ties

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(high_threshold={self.high_threshold}, "
            f"low_threshold={self.low_threshold}, force_match={self.force_match})"
        )

    def __call__(self, iou: Tensor) -> Tensor:
        """Match anchors (columns) to ground-truth boxes (rows).

        Args:
            iou: ``Tensor[M, N]`` or batched ``Tensor[B, M, N]`` IoU between M ground-truth
                boxes and N anchors. Rows filled with a negative value stand for padding
                (absent boxes) and never match.

        Returns:
            ``Tensor[N]`` (or ``Tensor[B, N]``) int64: the matched row index for positive
            anchors, :data:`BELOW_LOW_THRESHOLD` for negatives and
            :data:`BETWEEN_THRESHOLDS` for ignored anchors.
        """
        if iou.dim() < 2:
            raise ValueError(f"expected an IoU matrix [..., M, N], got shape {tuple(iou.shape)}")
        if iou.shape[-2] == 0:
            shape = iou.shape[:-2] + iou.shape[-1:]
            return torch.full(shape, BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)

        best_iou, matches = iou.max(dim=-2)  # [..., N]
        matches = torch.where(
            best_iou < self.low_threshold, torch.full_like(matches, BELOW_LOW_THRESHOLD), matches
        )
        between = (best_iou >= self.low_threshold) & (best_iou < self.high_threshold)
        matches = torch.where(between, torch.full_like(matches, BETWEEN_THRESHOLDS), matches)

        if self.force_match:
            best_per_gt, best_anchor = iou.max(dim=-1, keepdim=True)  # [..., M, 1]
            if self.force_match_ties:
                forced = (iou == best_per_gt) & (best_per_gt > 0)  # [..., M, N]
                forced_iou = torch.where(forced, iou, torch.full_like(iou, -1.0))
                forcing_gt = forced_iou.argmax(dim=-2)  # [..., N], highest IoU, first on ties
                matches = torch.where(forced.any(dim=-2), forcing_gt, matches)
            else:
                # One anchor per box; an anchor forced by several boxes takes the first: the
                # smallest box index scattered onto it ([..., N], M where none forces it).
                # A scatter over N anchors instead of an argmax over the [M, N] matrix.
                num_gt = iou.shape[-2]
                rows = torch.arange(num_gt, device=iou.device).expand(best_per_gt.shape[:-1])
                rows = torch.where(best_per_gt[..., 0] > 0, rows, num_gt)
                forcing_gt = torch.full_like(matches, num_gt)
                forcing_gt.scatter_reduce_(-1, best_anchor[..., 0], rows, reduce="amin")
                matches = torch.where(forcing_gt < num_gt, forcing_gt, matches)
        return matches


def match_boxes(gt_boxes: Tensor, anchors: Tensor, matcher: Matcher | None = None) -> Tensor:
    """Match ``Tensor[N, 4]`` xyxy anchors to ``Tensor[M, 4]`` xyxy ground-truth boxes.

    Returns ``Tensor[N]`` int64: ground-truth index or a sentinel (see :class:`Matcher`).
    ``M = 0`` gives all :data:`BELOW_LOW_THRESHOLD`.
    """
    matcher = matcher if matcher is not None else Matcher()
    return matcher(box_iou(gt_boxes, anchors))
