"""Targets and the EfficientDet loss: hand-computed values, empty targets, effdet peer check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import box_iou, decode
from efficientdet.detection.loss import (
    LossConfig,
    build_targets,
    compute_loss,
    focal_loss,
    huber_loss,
)
from efficientdet.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher

IMAGE_SIZE = (128, 256)
LEVELS = (3, 7)


def focal_by_hand(logit: float, target: int, alpha: float = 0.25, gamma: float = 1.5) -> float:
    p = 1 / (1 + math.exp(-logit))
    p_t = p if target else 1 - p
    alpha_t = alpha if target else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def to_levels(flat: torch.Tensor, image_size=IMAGE_SIZE, levels=LEVELS, num_anchors=9) -> list:
    """Inverse of the anchor-order flattening: ``[B, N, K]`` -> per level ``[B, A*K, H, W]``."""
    out, start = [], 0
    batch, _, k = flat.shape
    for level in range(levels[0], levels[1] + 1):
        h, w = image_size[0] // 2**level, image_size[1] // 2**level
        n = h * w * num_anchors
        block = flat[:, start : start + n].reshape(batch, h, w, num_anchors * k)
        out.append(block.permute(0, 3, 1, 2).contiguous())
        start += n
    assert start == flat.shape[1]
    return out


def test_focal_loss_hand_values() -> None:
    logits = torch.tensor([0.0, 2.0, -1.5, 3.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = torch.tensor(
        [focal_by_hand(x, int(t)) for x, t in zip(logits.tolist(), targets.tolist(), strict=True)]
    )
    torch.testing.assert_close(focal_loss(logits, targets), expected)
    # logit 0, positive: 0.25 * 0.5 ** 1.5 * log 2
    assert focal_loss(torch.tensor(0.0), torch.tensor(1.0)).item() == pytest.approx(
        0.25 * 0.5**1.5 * math.log(2)
    )


def test_focal_loss_equals_torchvision_with_its_gradient() -> None:
    import torchvision

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 300, 5, generator=g) * 4).requires_grad_()
    targets = torch.rand(2, 300, 5, generator=g) < 0.1
    reference = (logits.detach().clone().requires_grad_())
    ours = focal_loss(logits, targets)
    theirs = torchvision.ops.sigmoid_focal_loss(reference, targets.float(), alpha=0.25, gamma=1.5)
    torch.testing.assert_close(ours, theirs)
    weights = torch.rand(2, 300, 5, generator=g)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.rand(4, 6, generator=g) < 0.3
    assert torch.autograd.gradcheck(lambda v: focal_loss(v, t, alpha=0.4, gamma=2.0), (x,))


def test_focal_loss_sum_in_blocks_equals_the_masked_sum(monkeypatch) -> None:
    import efficientdet.detection.loss as loss_module

    monkeypatch.setattr(loss_module, "_FOCAL_BLOCK", 64)  # many blocks, a ragged last one
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(301, 7, generator=g) * 3).requires_grad_()
    labels = torch.randint(-2, 7, (301,), generator=g)  # negatives: no class
    keep = torch.rand(301, generator=g) > 0.2
    reference = logits.detach().clone().requires_grad_()
    one_hot = labels[:, None] == torch.arange(7)
    expected = (focal_loss(reference, one_hot) * keep[:, None]).sum()
    total = loss_module.focal_loss_sum(logits, labels, keep)
    torch.testing.assert_close(total, expected)
    (2.0 * total).backward()
    (2.0 * expected).backward()
    torch.testing.assert_close(logits.grad, reference.grad)


def test_huber_loss_hand_values() -> None:
    inputs = torch.tensor([0.05, 0.3, -0.3, 0.0])
    targets = torch.zeros(4)
    # 0.5 * 0.05**2 inside delta, delta * (|e| - delta / 2) outside.
    torch.testing.assert_close(
        huber_loss(inputs, targets), torch.tensor([0.00125, 0.025, 0.025, 0.0])
    )


def test_compute_loss_hand_computed() -> None:
    # One image, two anchors, two classes: anchor 0 is class 1, anchor 1 background.
    logits = torch.zeros(1, 2, 2)
    cls_targets = torch.tensor([[1, BELOW_LOW_THRESHOLD]])
    box_outputs = torch.zeros(1, 2, 4)
    box_targets = torch.tensor([[[0.05, 0.3, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    out = compute_loss(logits, box_outputs, cls_targets, box_targets, num_classes=2)
    normalizer = 1 + 1  # one positive + 1
    class_loss = (focal_by_hand(0, 1) + 3 * focal_by_hand(0, 0)) / normalizer
    box_loss = (0.00125 + 0.025) / (normalizer * 4)  # the background anchor's target is unused
    assert out["class_loss"].item() == pytest.approx(class_loss, rel=1e-6)
    assert out["box_loss"].item() == pytest.approx(box_loss, rel=1e-6)
    assert out["loss"].item() == pytest.approx(class_loss + 50 * box_loss, rel=1e-6)


def test_ignored_anchors_contribute_nothing() -> None:
    logits = torch.tensor([[[0.0, 0.0], [7.0, -3.0]]])
    box_outputs = torch.tensor([[[0.0] * 4, [5.0] * 4]])
    box_targets = torch.zeros(1, 2, 4)
    ignored = compute_loss(
        logits, box_outputs, torch.tensor([[1, BETWEEN_THRESHOLDS]]), box_targets, 2
    )
    expected = (focal_by_hand(0, 1) + focal_by_hand(0, 0)) / 2
    assert ignored["class_loss"].item() == pytest.approx(expected, rel=1e-6)
    assert ignored["box_loss"].item() == 0.0


def test_normalizer_is_summed_over_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 3, generator=g)
    box_outputs = torch.randn(2, 6, 4, generator=g) * 0.1
    box_targets = torch.randn(2, 6, 4, generator=g) * 0.1
    cls_targets = torch.tensor([[0, 2, -1, -1, -1, -1], [-1, 1, -1, -1, -2, -1]])
    both = compute_loss(logits, box_outputs, cls_targets, box_targets, 3)
    # Per image, un-normalise with the image's own (positives + 1), re-normalise by 3 + 1.
    total_class = total_box = 0.0
    for i, positives in enumerate((2, 1)):
        one = compute_loss(
            logits[i : i + 1],
            box_outputs[i : i + 1],
            cls_targets[i : i + 1],
            box_targets[i : i + 1],
            3,
        )
        total_class += one["class_loss"].item() * (positives + 1)
        total_box += one["box_loss"].item() * (positives + 1)
    assert both["class_loss"].item() == pytest.approx(total_class / 4, rel=1e-5)
    assert both["box_loss"].item() == pytest.approx(total_box / 4, rel=1e-5)


def test_build_targets_hand_case() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 40.0, 40.0]]
    )
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [22.0, 20.0, 42.0, 40.0]]),
            "labels": torch.tensor([3, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    cls_targets, box_targets = build_targets(anchors, targets)
    assert cls_targets.tolist() == [[3, BELOW_LOW_THRESHOLD, 1], [BELOW_LOW_THRESHOLD] * 3]
    expected = torch.zeros(2, 3, 4)
    expected[0, 2] = torch.tensor([0.0, 0.1, 0.0, 0.0])  # shifted by 2 px of a 20 px anchor
    torch.testing.assert_close(box_targets, expected)


def test_build_targets_ignore_band() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.5], [30.0, 30.0, 40.0, 40.0]]
    )
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    cls_targets, _ = build_targets(anchors, targets, Matcher(0.6, 0.4))  # anchor 1: IoU 0.55
    assert cls_targets.tolist() == [[0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]]


def test_positive_box_targets_decode_to_their_ground_truth() -> None:
    anchors = generate_anchors(IMAGE_SIZE, *LEVELS, AnchorConfig())
    boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0], [100.0, 30.0, 250.0, 120.0]])
    cls_targets, box_targets = build_targets(
        anchors, [{"boxes": boxes, "labels": torch.tensor([2, 0])}]
    )
    positive = cls_targets[0] >= 0
    assert set(cls_targets[0][positive].tolist()) == {0, 2}
    decoded = decode(box_targets[0][positive], anchors[positive])
    matched = torch.where(cls_targets[0][positive].unsqueeze(1) == 2, boxes[0], boxes[1])
    torch.testing.assert_close(decoded, matched, rtol=1e-5, atol=1e-3)


def test_empty_targets_give_zero_box_loss_and_finite_class_loss() -> None:
    anchors = generate_anchors(IMAGE_SIZE, *LEVELS, AnchorConfig())
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    cls_targets, box_targets = build_targets(anchors, [empty, empty])
    assert (cls_targets == BELOW_LOW_THRESHOLD).all() and (box_targets == 0).all()
    g = torch.Generator().manual_seed(1)
    class_outputs = to_levels(torch.randn(2, anchors.shape[0], 4, generator=g).requires_grad_())
    box_outputs = to_levels(torch.randn(2, anchors.shape[0], 4, generator=g))
    out = compute_loss(class_outputs, box_outputs, cls_targets, box_targets, 4)
    assert out["box_loss"].item() == 0.0
    assert torch.isfinite(out["class_loss"]) and out["class_loss"].item() > 0
    out["loss"].backward()


def test_per_level_and_flattened_outputs_agree() -> None:
    g = torch.Generator().manual_seed(2)
    anchors = generate_anchors(IMAGE_SIZE, *LEVELS, AnchorConfig())
    logits = torch.randn(1, anchors.shape[0], 3, generator=g)
    deltas = torch.randn(1, anchors.shape[0], 4, generator=g) * 0.1
    target = {"boxes": torch.tensor([[20.0, 20.0, 60.0, 100.0]]), "labels": torch.tensor([1])}
    cls_targets, box_targets = build_targets(anchors, [target])
    flat = compute_loss(logits, deltas, cls_targets, box_targets, 3)
    levels = compute_loss(to_levels(logits), to_levels(deltas), cls_targets, box_targets, 3)
    for key in ("loss", "class_loss", "box_loss"):
        torch.testing.assert_close(flat[key], levels[key])


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="disagree"):
        compute_loss(
            torch.zeros(1, 5, 2),
            torch.zeros(1, 5, 4),
            torch.zeros(1, 6, dtype=torch.int64),
            torch.zeros(1, 6, 4),
            2,
        )


def test_loss_config_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        LossConfig(alpha=1.5)
    with pytest.raises(ValueError, match="low_threshold"):
        LossConfig(match_threshold=0.4, unmatched_threshold=0.5)
    assert LossConfig(unmatched_threshold=0.4).matcher().low_threshold == 0.4


@pytest.mark.filterwarnings("ignore::FutureWarning")  # effdet uses torch.jit.script
def test_targets_and_losses_match_effdet() -> None:
    from effdet.anchors import AnchorLabeler, Anchors
    from effdet.loss import DetectionLoss

    num_classes, num_anchors = 5, 9
    ratios = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]
    their_anchors = Anchors(LEVELS[0], LEVELS[1], 3, ratios, 4.0, IMAGE_SIZE)
    anchors = generate_anchors(IMAGE_SIZE, *LEVELS, AnchorConfig())
    torch.testing.assert_close(anchors, their_anchors.boxes[:, [1, 0, 3, 2]])

    # Boxes large enough to reach IoU 0.5 with some anchor: effdet force-matches a box to a
    # single best anchor, this library to all anchors tied at the best IoU (a small box
    # inside several equal anchors ties on all of them), so weak boxes would differ there.
    g = torch.Generator().manual_seed(3)
    targets = []
    for count in (4, 0, 2):
        xy = torch.rand(count, 2, generator=g) * torch.tensor([200.0, 90.0])
        wh = torch.rand(count, 2, generator=g) * 60 + 24
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(0, num_classes, (count,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})

    labeler = AnchorLabeler(their_anchors, num_classes, match_threshold=0.5)
    their_cls, their_box, their_pos = labeler.batch_label_anchors(
        [t["boxes"][:, [1, 0, 3, 2]] for t in targets],  # yxyx
        [t["labels"].float() + 1 for t in targets],  # 1-based classes
    )
    cls_targets, box_targets = build_targets(anchors, targets)
    batch = len(targets)
    theirs_flat_cls = torch.cat([c.reshape(batch, -1) for c in their_cls], dim=1)
    theirs_flat_box = torch.cat([b.reshape(batch, -1, 4) for b in their_box], dim=1)
    assert torch.equal(cls_targets, theirs_flat_cls)
    torch.testing.assert_close(box_targets, theirs_flat_box, rtol=1e-5, atol=1e-5)
    assert (cls_targets >= 0).sum().item() == their_pos.sum().item()

    class_outputs = to_levels(torch.randn(batch, anchors.shape[0], num_classes, generator=g) - 2)
    box_outputs = to_levels(torch.randn(batch, anchors.shape[0], 4, generator=g) * 0.2)
    loss_config = SimpleNamespace(
        num_classes=num_classes,
        alpha=0.25,
        gamma=1.5,
        delta=0.1,
        box_loss_weight=50.0,
        label_smoothing=0.0,
        legacy_focal=False,
        jit_loss=False,
    )
    their_total, their_class, their_box_loss = DetectionLoss(loss_config)(
        class_outputs, box_outputs, their_cls, their_box, their_pos
    )
    ours = compute_loss(class_outputs, box_outputs, cls_targets, box_targets, num_classes)
    torch.testing.assert_close(ours["class_loss"], their_class, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["box_loss"], their_box_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["loss"], their_total, rtol=1e-5, atol=1e-6)
    assert num_anchors * num_classes == class_outputs[0].shape[1]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # effdet uses torch.jit.script
def test_small_boxes_force_match_as_effdet() -> None:
    """Small boxes reach IoU 0.5 with no anchor: only force-matching makes positives, and the
    official one-anchor-per-box rule gives exactly effdet's labels."""
    from effdet.anchors import AnchorLabeler, Anchors

    ratios = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]
    their_anchors = Anchors(LEVELS[0], LEVELS[1], 3, ratios, 4.0, IMAGE_SIZE)
    anchors = generate_anchors(IMAGE_SIZE, *LEVELS, AnchorConfig())
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(6, 2, generator=g) * torch.tensor([200.0, 90.0])
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 12 + 3], dim=1)
    labels = torch.randint(0, 3, (6,), generator=g)
    their_cls, _, _ = AnchorLabeler(their_anchors, 3).batch_label_anchors(
        [boxes[:, [1, 0, 3, 2]]], [labels.float() + 1]
    )
    theirs = torch.cat([c.reshape(1, -1) for c in their_cls], dim=1)[0]
    ours = build_targets(anchors, [{"boxes": boxes, "labels": labels}])[0][0]
    assert (box_iou(boxes, anchors).max() < 0.5).item()
    positives = ours >= 0
    assert positives.sum().item() == 6
    assert torch.equal(positives, theirs >= 0)
    assert torch.equal(ours[positives], theirs[positives].long())
