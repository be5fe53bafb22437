"""Merging detections: weighted box fusion and class-aware NMS over pooled runs."""

from __future__ import annotations

import pytest
import torch

from efficientdet.detection.fusion import merge_detections, weighted_boxes_fusion


def det(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_wbf_averages_a_cluster_by_score_and_divides_by_the_runs() -> None:
    a = det([[0, 0, 10, 10]], [0.9], [1])
    b = det([[2, 0, 12, 10]], [0.3], [1])
    fused = weighted_boxes_fusion([a, b])
    assert fused["boxes"].shape == (1, 4)
    # x1 = (0 * 0.9 + 2 * 0.3) / 1.2 = 0.5, x2 = (10 * 0.9 + 12 * 0.3) / 1.2 = 10.5
    torch.testing.assert_close(fused["boxes"][0], torch.tensor([0.5, 0.0, 10.5, 10.0]))
    torch.testing.assert_close(fused["scores"], torch.tensor([0.6]))  # (0.9 + 0.3) / 2 runs
    assert fused["labels"].tolist() == [1]


def test_wbf_keeps_classes_and_distant_boxes_apart() -> None:
    a = det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.7], [0, 0])
    b = det([[0, 0, 10, 10]], [0.6], [1])  # same place, other class
    fused = weighted_boxes_fusion([a, b])
    assert len(fused["boxes"]) == 3
    # each found by one of two runs: half its score; best first
    torch.testing.assert_close(fused["scores"], torch.tensor([0.4, 0.35, 0.3]))
    assert fused["labels"].tolist() == [0, 0, 1]


def test_wbf_box_found_by_one_run_of_three_keeps_a_third_of_its_score() -> None:
    runs = [det([[0, 0, 10, 10]], [0.9], [2]), det([], [], []), det([], [], [])]
    fused = weighted_boxes_fusion(runs)
    torch.testing.assert_close(fused["scores"], torch.tensor([0.3]))
    torch.testing.assert_close(fused["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))


def test_wbf_threshold_and_weights() -> None:
    a = det([[0, 0, 10, 10]], [0.5], [0])
    b = det([[0, 0, 10, 14]], [0.5], [0])  # IoU 100 / 140 = 0.714
    assert len(weighted_boxes_fusion([a, b], iou_threshold=0.8)["boxes"]) == 2
    fused = weighted_boxes_fusion([a, b], iou_threshold=0.7, weights=[3.0, 1.0])
    # scores 1.5 and 0.5: y2 = (10 * 1.5 + 14 * 0.5) / 2 = 11; score = 2 / 4
    torch.testing.assert_close(fused["boxes"][0], torch.tensor([0.0, 0.0, 10.0, 11.0]))
    torch.testing.assert_close(fused["scores"], torch.tensor([0.5]))


def test_wbf_of_one_run_after_nms_returns_it_unchanged() -> None:
    one = det([[0, 0, 10, 10], [5, 0, 15, 10], [30, 30, 40, 45]], [0.9, 0.5, 0.7], [0, 0, 1])
    fused = weighted_boxes_fusion([one])  # the first two overlap at IoU 1/3 < 0.55
    order = torch.tensor([0, 2, 1])
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(fused[key], one[key][order])


def test_wbf_empty_and_validation() -> None:
    fused = weighted_boxes_fusion([det([], [], [])])
    assert fused["boxes"].shape == (0, 4) and fused["labels"].dtype == torch.int64
    assert weighted_boxes_fusion([])["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="weights"):
        weighted_boxes_fusion([det([], [], [])], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="lack"):
        weighted_boxes_fusion([{"boxes": torch.zeros(0, 4)}])


def test_merge_nms_keeps_the_best_of_each_overlap_per_class() -> None:
    a = det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.4], [0, 0])
    b = det([[1, 0, 11, 10], [0, 0, 10, 10]], [0.8, 0.7], [0, 3])
    merged = merge_detections([a, b], method="nms")
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.4])
    assert merged["labels"].tolist() == [0, 3, 0]
    assert len(merge_detections([a, b], max_detections=2)["boxes"]) == 2
    wbf = merge_detections([a, b], method="wbf")
    assert len(wbf["boxes"]) == 3
    with pytest.raises(ValueError, match="not one of"):
        merge_detections([a], method="mean")


def test_wbf_members_average_ignores_runs_that_did_not_see_the_box() -> None:
    runs = [det([[0, 0, 10, 10]], [0.9], [0]), det([[0, 0, 10, 10]], [0.5], [0]), det([], [], [])]
    fused = weighted_boxes_fusion(runs, score_average="members")
    torch.testing.assert_close(fused["scores"], torch.tensor([0.7]))
    fused = weighted_boxes_fusion(runs)
    torch.testing.assert_close(fused["scores"], torch.tensor([1.4 / 3]))
