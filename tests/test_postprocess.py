"""Post-processing: top-k, decoding, clipping, hard and soft NMS, mapping to original pixels."""

from __future__ import annotations

import math

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection import postprocess as postprocess_module
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import box_iou, encode, flatten_level_outputs
from efficientdet.detection.postprocess import (
    PostprocessConfig,
    best_kept_nms,
    class_aware_nms,
    postprocess,
    select_top_k,
    soft_nms,
    suppress_labels,
)
from efficientdet.detection.transform import LetterboxInfo, scale_boxes_to_original

INPUT_SIZE = (128, 256)  # (H, W)
LEVELS = (3, 7)
NUM_CLASSES = 3
ANCHORS = generate_anchors(INPUT_SIZE, *LEVELS, AnchorConfig())


def to_levels(
    flat: torch.Tensor, num_anchors: int = 9, memory_format: torch.memory_format = torch.contiguous_format
) -> list[torch.Tensor]:
    """``[B, N, K]`` in anchor order -> per level ``[B, A*K, H, W]`` (the model's layout),
    NCHW or channels-last in memory."""
    out, start = [], 0
    batch, _, k = flat.shape
    for level in range(LEVELS[0], LEVELS[1] + 1):
        h, w = INPUT_SIZE[0] // 2**level, INPUT_SIZE[1] // 2**level
        n = h * w * num_anchors
        block = flat[:, start : start + n].reshape(batch, h, w, num_anchors * k)
        out.append(block.permute(0, 3, 1, 2).contiguous(memory_format=memory_format))
        start += n
    return out


def planted_outputs(
    boxes: torch.Tensor, labels: list[int], logits: list[float], batch: int = 1
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Raw outputs that predict ``boxes`` (input pixels) from their best anchors, all else
    background (logit -10, score below the default threshold)."""
    cls = torch.full((batch, ANCHORS.shape[0], NUM_CLASSES), -10.0)
    deltas = torch.zeros(batch, ANCHORS.shape[0], 4)
    anchor_index = box_iou(boxes, ANCHORS).argmax(dim=1)
    assert len(set(anchor_index.tolist())) == len(labels)
    for box, n, label, logit in zip(boxes, anchor_index.tolist(), labels, logits, strict=True):
        cls[:, n, label] = logit
        deltas[:, n] = encode(box, ANCHORS[n])
    return to_levels(cls), to_levels(deltas)


def test_planted_boxes_come_back_in_original_pixels_of_a_non_square_image() -> None:
    original_size = (60, 150)  # (H, W): letterboxed into 128 x 256 with scale 256 / 150
    scale = min(INPUT_SIZE[0] / original_size[0], INPUT_SIZE[1] / original_size[1])
    original = torch.tensor(
        [[10.0, 5.0, 70.0, 50.0], [80.0, 20.0, 140.0, 55.0], [100.0, 2.0, 112.0, 30.0]]
    )
    cls, box = planted_outputs(original * scale, labels=[2, 0, 2], logits=[4.0, 5.0, 3.0])
    (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE)
    assert det["labels"].dtype == torch.int64
    assert det["labels"].tolist() == [0, 2, 2]  # by decreasing score
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([5.0, 4.0, 3.0])))
    mapped = scale_boxes_to_original(det["boxes"], LetterboxInfo(scale, original_size, INPUT_SIZE))
    torch.testing.assert_close(mapped, original[[1, 0, 2]], rtol=0, atol=1e-3)


def test_boxes_are_clipped_to_the_input() -> None:
    cls, box = planted_outputs(torch.tensor([[200.0, 80.0, 300.0, 150.0]]), [1], [2.0])
    (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE)
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[200.0, 80.0, 256.0, 128.0]]), rtol=0, atol=1e-3
    )


def test_score_threshold_and_empty_output() -> None:
    cls, box = planted_outputs(torch.tensor([[10.0, 10.0, 60.0, 60.0]]), [1], [-3.0])  # 0.047
    (det,) = postprocess(
        cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(score_threshold=0.05)
    )
    assert (
        det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)
    )
    (det,) = postprocess(
        cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(score_threshold=0.04)
    )
    assert det["labels"].tolist() == [1]


def two_overlapping_boxes(same_class: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    # IoU 0.6 between the two (the second is the top 60% of the first).
    boxes = torch.tensor([[40.0, 40.0, 104.0, 104.0], [40.0, 40.0, 104.0, 78.4]])
    first_anchor = box_iou(boxes[:1], ANCHORS).argmax()
    cls = torch.full((1, ANCHORS.shape[0], NUM_CLASSES), -10.0)
    deltas = torch.zeros(1, ANCHORS.shape[0], 4)
    second_anchor = first_anchor + 1  # any other anchor: the deltas place the box
    for n, b, label, logit in (
        (first_anchor, boxes[0], 1, 2.0),
        (second_anchor, boxes[1], 1 if same_class else 0, 1.0),
    ):
        cls[0, n, label] = logit
        deltas[0, n] = encode(b, ANCHORS[n])
    return to_levels(cls), to_levels(deltas)


def test_hard_nms_drops_and_soft_nms_decays_overlaps() -> None:
    cls, box = two_overlapping_boxes(same_class=True)
    (hard,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(nms="hard"))
    assert hard["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item()])
    (soft,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(nms="soft"))
    s1, s2 = torch.sigmoid(torch.tensor([2.0, 1.0])).tolist()
    assert soft["scores"].tolist() == pytest.approx([s1, s2 * math.exp(-(0.6**2) / 0.5)], rel=1e-4)
    torch.testing.assert_close(
        soft["boxes"],
        torch.tensor([[40.0, 40.0, 104.0, 104.0], [40.0, 40.0, 104.0, 78.4]]),
        rtol=0,
        atol=1e-3,
    )


def test_nms_is_class_aware() -> None:
    cls, box = two_overlapping_boxes(same_class=False)
    s1, s2 = torch.sigmoid(torch.tensor([2.0, 1.0])).tolist()
    for method in ("hard", "soft"):
        (det,) = postprocess(
            cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(nms=method)
        )
        assert det["labels"].tolist() == [1, 0]
        assert det["scores"].tolist() == pytest.approx([s1, s2])


def test_top_k_happens_before_nms() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 40.0, 40.0], [100.0, 0.0, 140.0, 40.0], [200.0, 60.0, 240.0, 100.0]]
    )
    cls, box = planted_outputs(boxes, [0, 1, 2], [3.0, 2.0, 1.0])
    for method in ("hard", "soft"):
        config = PostprocessConfig(nms=method, pre_nms_top_k=2)
        (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, config)
        assert det["labels"].tolist() == [0, 1]
        (det,) = postprocess(
            cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, PostprocessConfig(nms=method)
        )
        assert det["labels"].tolist() == [0, 1, 2]


def test_max_detections() -> None:
    g = torch.Generator().manual_seed(0)
    cls = to_levels(torch.randn(2, ANCHORS.shape[0], NUM_CLASSES, generator=g))
    box = to_levels(torch.randn(2, ANCHORS.shape[0], 4, generator=g) * 0.1)
    for method in ("hard", "soft"):
        config = PostprocessConfig(nms=method, max_detections=7)
        dets = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, config)
        assert len(dets) == 2
        for det in dets:
            assert det["boxes"].shape == (7, 4)
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
            assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES


LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("method", ["hard", "soft"])
def test_suppressed_labels_take_no_top_k_place_and_never_come_out(method: str, layout: str) -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 40.0, 40.0], [100.0, 0.0, 140.0, 40.0], [200.0, 60.0, 240.0, 100.0]]
    )
    cls, box = planted_outputs(boxes, [0, 1, 2], [3.0, 2.0, 1.0])
    cls = [c.contiguous(memory_format=LAYOUTS[layout]) for c in cls]
    before = [c.clone() for c in cls]
    top1 = PostprocessConfig(nms=method, pre_nms_top_k=1)
    (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, top1)
    assert det["labels"].tolist() == [0]
    top1 = PostprocessConfig(nms=method, pre_nms_top_k=1, suppressed_labels=(0,))
    (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, top1)
    assert det["labels"].tolist() == [1]  # the best label left took the one place
    assert det["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item()])
    config = PostprocessConfig(nms=method, score_threshold=0.0, suppressed_labels=(0, 2))
    (det,) = postprocess(cls, box, ANCHORS, NUM_CLASSES, INPUT_SIZE, config)
    assert set(det["labels"].tolist()) == {1}  # even at threshold 0, with places to spare
    for got, old in zip(cls, before, strict=True):
        assert torch.equal(got, old)  # the caller's outputs are not modified


def test_suppress_labels_sets_every_anchors_slot_to_minus_inf_in_the_same_layout() -> None:
    levels = [torch.randn(2, 3 * 4, 5, 6).contiguous(memory_format=torch.channels_last)]
    (out,) = suppress_labels(levels, 4, [1, 3])
    assert out.is_contiguous(memory_format=torch.channels_last)
    per_class = out.view(2, 3, 4, 5, 6)
    assert bool((per_class[:, :, [1, 3]] == -math.inf).all())
    assert torch.equal(per_class[:, :, [0, 2]], levels[0].view(2, 3, 4, 5, 6)[:, :, [0, 2]])
    assert suppress_labels(levels, 4, [])[0] is levels[0]
    with pytest.raises(ValueError, match=r"\[4\] are not all in 0..3"):
        suppress_labels(levels, 4, [4])


@pytest.mark.parametrize("k", [1, 37, 500, 10**6])
@pytest.mark.parametrize("traceable", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_select_top_k_equals_a_full_sort(k: int, traceable: bool, layout: str) -> None:
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(2, ANCHORS.shape[0], NUM_CLASSES, generator=g)
    levels = to_levels(logits, memory_format=LAYOUTS[layout])
    scores, anchor_index, labels = select_top_k(levels, NUM_CLASSES, k, traceable=traceable)
    expected = logits.reshape(2, -1).topk(min(k, logits[0].numel()), dim=1).values.sigmoid()
    torch.testing.assert_close(scores.sort(dim=1, descending=True).values, expected)
    # Each candidate's (anchor, label) points at its own logit.
    picked = logits[torch.arange(2).unsqueeze(1), anchor_index, labels]
    torch.testing.assert_close(picked.sigmoid(), scores)
    flat = flatten_level_outputs(levels, NUM_CLASSES)
    assert torch.equal(flat, logits)


def test_soft_nms_single_image_api() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.3])
    labels = torch.tensor([0, 0, 0])
    keep, new_scores = soft_nms(boxes, scores, labels, sigma=0.5)
    assert keep.tolist() == [0, 1, 2]  # 0.8 * exp(-0.25 / 0.5) = 0.485 stays above 0.3
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.8 * math.exp(-0.5), 0.3]))
    keep, _ = soft_nms(boxes, scores, labels, score_threshold=0.5)
    assert keep.tolist() == [0]  # the decayed box falls under the threshold
    keep, _ = soft_nms(boxes[:0], scores[:0], labels[:0])
    assert keep.shape == (0,)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # effdet uses torch.jit.script
def test_soft_nms_matches_effdet() -> None:
    from effdet.soft_nms import batched_soft_nms

    g = torch.Generator().manual_seed(5)
    xy = torch.rand(150, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(150, 2, generator=g) * 60 + 5], dim=1)
    scores = torch.rand(150, generator=g) * 0.9 + 0.05
    labels = torch.randint(0, 4, (150,), generator=g)
    their_keep, their_scores = batched_soft_nms(
        boxes, scores, labels, method_gaussian=True, sigma=0.5, score_threshold=0.001
    )
    keep, new_scores = soft_nms(
        boxes, scores, labels, sigma=0.5, score_threshold=0.001, max_detections=100
    )
    assert keep.tolist() == their_keep[:100].tolist()
    torch.testing.assert_close(new_scores, their_scores[:100])


def test_boxes_back_to_the_original_image() -> None:
    boxes = torch.tensor([[20.0, 10.0, 300.0, 120.0]])
    mapped = scale_boxes_to_original(boxes, LetterboxInfo(2.0, (50, 140), INPUT_SIZE))
    torch.testing.assert_close(mapped, torch.tensor([[10.0, 5.0, 140.0, 50.0]]))
    with pytest.raises(ValueError, match="scale"):
        LetterboxInfo(0.0, (50, 140), INPUT_SIZE)


def test_config_validation_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'hard', 'soft'"):
        PostprocessConfig(nms="fast")
    with pytest.raises(ValueError, match="max_detections"):
        PostprocessConfig(max_detections=0)
    with pytest.raises(ValueError, match="sorted without repeats"):
        PostprocessConfig(suppressed_labels=(3, 1))
    with pytest.raises(ValueError, match="labels >= 0"):
        PostprocessConfig(suppressed_labels=(-1,))
    with pytest.raises(ValueError, match="anchors"):
        postprocess(
            *planted_outputs(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), [0], [1.0]),
            ANCHORS[:-9],
            NUM_CLASSES,
            INPUT_SIZE,
        )


@pytest.mark.parametrize("count", [300, 3000])
def test_class_aware_nms_equals_torchvision_batched_nms(count: int) -> None:
    import torchvision

    generator = torch.Generator().manual_seed(count)
    corners = torch.rand(count, 2, generator=generator) * 200
    boxes = torch.cat([corners, corners + 5 + 40 * torch.rand(count, 2, generator=generator)], 1)
    scores = torch.randperm(count, generator=generator).float() / count  # no ties
    labels = torch.randint(0, 40, (count,), generator=generator)
    keep = class_aware_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == torchvision.ops.batched_nms(boxes, scores, labels, 0.5).tolist()
    assert class_aware_nms(boxes[:0], scores[:0], labels[:0], 0.5).shape == (0,)


@pytest.mark.parametrize(
    ("count", "max_kept", "spread"),
    [(3000, 100, 6.0), (3000, 5000, 6.0), (5000, 100, 6.0), (50, 100, 6.0), (3000, 20, 400.0)],
)
def test_best_kept_nms_is_the_head_of_full_nms(
    count: int, max_kept: int, spread: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefixes of the score order give the same kept boxes as NMS over all candidates: with
    a first prefix of 64 boxes, dense clusters (a few kept of many) need several rounds;
    spread-out boxes stop at the first."""
    monkeypatch.setattr(postprocess_module, "NMS_FIRST_CANDIDATES", 64)
    calls: list[int] = []
    nms = postprocess_module.class_aware_nms
    monkeypatch.setattr(
        postprocess_module, "class_aware_nms", lambda b, *rest: calls.append(len(b)) or nms(b, *rest)
    )
    generator = torch.Generator().manual_seed(count)
    centres = torch.rand(12, 2, generator=generator) * 300
    around = centres[torch.randint(0, 12, (count,), generator=generator)]
    corners = around + torch.randn(count, 2, generator=generator) * spread
    boxes = torch.cat([corners, corners + 30 + 5 * torch.rand(count, 2, generator=generator)], 1)
    scores = torch.rand(count, generator=generator)
    scores[:10] = scores[10:20]  # ties too
    labels = torch.randint(0, 3, (count,), generator=generator)
    full = class_aware_nms(boxes, scores, labels, 0.5)
    got = best_kept_nms(boxes, scores, labels, 0.5, max_kept)
    assert got.tolist() == full[:max_kept].tolist()
    assert 0 < len(got) <= max_kept
    assert calls[0] == min(64, count) and calls[-1] <= count
    if spread > 100:
        assert calls == [64]  # 20 of the best 64 spread-out boxes survive: one round
    elif len(full) < max_kept:
        assert calls[-1] == count  # fewer kept than asked: every candidate went in


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_select_top_k_with_nan_logits_falls_back_to_the_gather(layout: str) -> None:
    logits = torch.randn(1, ANCHORS.shape[0], NUM_CLASSES, generator=torch.Generator().manual_seed(3))
    logits[0, 5, 1] = float("nan")
    fast = select_top_k(to_levels(logits, memory_format=LAYOUTS[layout]), NUM_CLASSES, 100)
    exact = select_top_k(to_levels(logits), NUM_CLASSES, 100, traceable=True)
    assert fast[0].shape == exact[0].shape == (1, 100)
    assert torch.equal(fast[1].sort().values, exact[1].sort().values)
