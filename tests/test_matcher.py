"""IoU matcher: threshold bands, force matching, empty and padded ground truth."""

from __future__ import annotations

import pytest
import torch

from efficientdet.detection.matcher import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    Matcher,
    match_boxes,
)

NEG, IGN = BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS

# Rows are ground-truth boxes, columns anchors.
IOU = torch.tensor(
    [
        [0.9, 0.30, 0.5, 0.10, 0.0],
        [0.2, 0.45, 0.6, 0.41, 0.0],
    ]
)


def test_sentinels_are_distinct_negative_values() -> None:
    assert BELOW_LOW_THRESHOLD == -1 and BETWEEN_THRESHOLDS == -2


def test_official_single_threshold() -> None:
    # 0.5 exactly is positive; anchor 2 prefers box 1 (0.6 > 0.5). No ignore band.
    assert Matcher(0.5)(IOU).tolist() == [0, NEG, 1, NEG, NEG]


def test_ignore_band() -> None:
    # Anchors with best IoU in [0.4, 0.5) are ignored, below 0.4 negative.
    assert Matcher(0.5, 0.4)(IOU).tolist() == [0, IGN, 1, IGN, NEG]
    assert Matcher(0.5, 0.42)(IOU).tolist() == [0, IGN, 1, NEG, NEG]


def test_force_match_takes_one_anchor_or_all_ties() -> None:
    iou = torch.tensor([[0.3, 0.2, 0.3], [0.1, 0.6, 0.05]])
    # Box 0 reaches only 0.3, on anchors 0 and 2 alike: officially the first becomes its
    # positive; with force_match_ties both do.
    assert Matcher(0.5)(iou).tolist() == [0, 1, NEG]
    assert Matcher(0.5, force_match_ties=True)(iou).tolist() == [0, 1, 0]
    assert Matcher(0.5, force_match=False)(iou).tolist() == [NEG, 1, NEG]


def test_force_match_overrides_the_band_and_other_boxes() -> None:
    # Box 0's best anchor (1) lies in the ignore band and prefers box 1 on IoU, but it is
    # given to box 0, whose only chance it is; anchor 0 is box 1's best.
    iou = torch.tensor([[0.1, 0.42, 0.0], [0.7, 0.45, 0.0]])
    assert Matcher(0.5, 0.4)(iou).tolist() == [1, 0, NEG]


def test_anchor_forced_by_two_boxes() -> None:
    iou = torch.tensor([[0.40, 0.1], [0.45, 0.0]])
    # The official ArgMaxMatcher gives it to the first forcing box; the ties variant to the
    # box it overlaps most.
    assert Matcher(0.5)(iou).tolist() == [0, NEG]
    assert Matcher(0.5, force_match_ties=True)(iou).tolist() == [1, NEG]


def test_box_overlapping_nothing_forces_nothing() -> None:
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.7, 0.0]])
    assert Matcher(0.5)(iou).tolist() == [NEG, 1, NEG]  # not [0, 1, 0]


def test_no_ground_truth_gives_all_negative() -> None:
    result = Matcher(0.5)(torch.zeros(0, 7))
    assert result.dtype == torch.int64 and result.tolist() == [NEG] * 7
    assert Matcher(0.5)(torch.zeros(3, 0, 7)).shape == (3, 7)


def test_batched_with_padding_rows_matches_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(3, 40, generator=g), torch.rand(1, 40, generator=g)
    padded = torch.full((2, 3, 40), -1.0)
    padded[0], padded[1, :1] = first, second
    matcher = Matcher(0.5, 0.4)
    batched = matcher(padded)
    assert torch.equal(batched[0], matcher(first))
    assert torch.equal(batched[1], matcher(second))


def test_match_boxes_on_real_boxes() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [22.0, 22.0, 40.0, 40.0]])
    # IoUs: box 0 -> (1, 1/3, 0); box 1 -> (0, 0, 64/424): forced onto anchor 2.
    assert match_boxes(gt, anchors).tolist() == [0, NEG, 1]
    assert match_boxes(gt[:0], anchors).tolist() == [NEG] * 3


@pytest.mark.parametrize(("high", "low"), [(0.5, 0.6), (1.5, 0.5), (0.5, -0.1)])
def test_invalid_thresholds(high: float, low: float) -> None:
    with pytest.raises(ValueError, match="low_threshold <= high_threshold"):
        Matcher(high, low)


def _match_by_hand(iou: torch.Tensor, high: float, low: float) -> list[int]:
    """The matching rules applied one anchor and one box at a time (no ties option)."""
    rows, cols = iou.shape
    out = []
    for a in range(cols):
        best = max(range(rows), key=lambda r: (iou[r, a].item(), -r))  # first on ties
        value = iou[best, a].item()
        out.append(best if value >= high else NEG if value < low else IGN)
    forced: dict[int, int] = {}
    for r in range(rows):
        if iou[r].max().item() <= 0:
            continue  # a padding row or a box that overlaps nothing forces nothing
        anchor = int(iou[r].argmax())  # the first anchor at the box's best IoU
        forced.setdefault(anchor, r)  # the first box wins an anchor several boxes force
    for anchor, r in forced.items():
        out[anchor] = r
    return out


def test_force_match_agrees_with_the_rules_applied_by_hand() -> None:
    # Coarse IoU values (ties everywhere), zero rows and padding rows, two bands.
    g = torch.Generator().manual_seed(3)
    for trial in range(300):
        rows, cols = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        iou = (torch.rand(rows, cols, generator=g) * 4).floor() / 4
        if trial % 4 == 0:
            iou[0] = -1.0
        if trial % 5 == 0:
            iou[-1] = 0.0
        for high, low in [(0.5, 0.5), (0.5, 0.25)]:
            assert Matcher(high, low)(iou).tolist() == _match_by_hand(iou, high, low), (trial, iou)
