"""Box formats, box coding and the head-output layout."""

from __future__ import annotations

import math

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import (
    BBOX_XFORM_CLIP,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    decode,
    elementwise_box_iou,
    encode,
    flatten_level_outputs,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def random_boxes(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 200
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 100 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_hand_computed() -> None:
    anchor = torch.tensor([0.0, 0.0, 10.0, 20.0])  # cx 5, cy 10, w 10, h 20
    shifted = torch.tensor([2.0, 4.0, 12.0, 24.0])  # same size, centre (7, 14)
    torch.testing.assert_close(encode(shifted, anchor), torch.tensor([0.2, 0.2, 0.0, 0.0]))
    wide = torch.tensor([0.0, 0.0, 20.0, 10.0])  # cx 10, cy 5, w 20, h 10
    expected = torch.tensor([-0.25, 0.5, math.log(0.5), math.log(2.0)])  # (dy, dx, dh, dw)
    torch.testing.assert_close(encode(wide, anchor), expected)
    torch.testing.assert_close(decode(expected, anchor), wide)


def test_encode_decode_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    boxes, anchors = random_boxes(500, g), random_boxes(500, g)
    deltas = encode(boxes, anchors)
    assert deltas.shape == (500, 4)
    torch.testing.assert_close(decode(deltas, anchors), boxes)
    # Broadcasting: one box against many anchors, with leading batch dimensions.
    batched = encode(boxes[:3].unsqueeze(1), anchors[:7].unsqueeze(0))
    assert batched.shape == (3, 7, 4)
    torch.testing.assert_close(
        decode(batched, anchors[:7].unsqueeze(0)), boxes[:3, None].expand(3, 7, 4)
    )


def test_decode_clamps_size_deltas() -> None:
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchor)
    assert torch.isfinite(boxes).all()
    side = 16.0 * math.exp(BBOX_XFORM_CLIP)  # 1000 pixels
    torch.testing.assert_close(
        boxes, torch.tensor([[8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]])
    )


def test_encode_degenerate_box_is_finite() -> None:
    deltas = encode(torch.tensor([5.0, 5.0, 5.0, 9.0]), torch.tensor([0.0, 0.0, 10.0, 10.0]))
    assert torch.isfinite(deltas).all()


def test_format_conversions() -> None:
    xyxy = torch.tensor([[10.0, 20.0, 40.0, 30.0]])
    torch.testing.assert_close(xyxy_to_xywh(xyxy), torch.tensor([[10.0, 20.0, 30.0, 10.0]]))
    torch.testing.assert_close(xyxy_to_cxcywh(xyxy), torch.tensor([[25.0, 25.0, 30.0, 10.0]]))
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(50, g)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_clip_boxes_non_square() -> None:
    boxes = torch.tensor([[-5.0, -3.0, 120.0, 70.0], [10.0, 10.0, 20.0, 20.0]])
    clipped = clip_boxes(boxes, (50, 100))  # H = 50, W = 100
    torch.testing.assert_close(
        clipped, torch.tensor([[0.0, 0.0, 100.0, 50.0], [10.0, 10.0, 20.0, 20.0]])
    )


def test_iou_and_area() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))
    torch.testing.assert_close(box_area(b), torch.tensor([100.0, 100.0, 100.0]))
    torch.testing.assert_close(elementwise_box_iou(a, b), torch.tensor([50 / 150, 0.0, 1.0]))
    point = torch.tensor([3.0, 3.0, 3.0, 3.0])
    assert elementwise_box_iou(point, point).item() == 0.0
    g = torch.Generator().manual_seed(2)
    x, y = random_boxes(20, g), random_boxes(20, g)
    torch.testing.assert_close(elementwise_box_iou(x, y), box_iou(x, y).diagonal())


def test_flatten_level_outputs_follows_anchor_order() -> None:
    # Level tensors whose value encodes (anchor a, value k, row y, column x).
    num_anchors, channels = 3, 2
    sizes = [(4, 6), (2, 3)]
    outputs = []
    for level, (h, w) in enumerate(sizes):
        a = torch.arange(num_anchors).view(num_anchors, 1, 1, 1)
        k = torch.arange(channels).view(1, channels, 1, 1)
        y = torch.arange(h).view(1, 1, h, 1)
        x = torch.arange(w).view(1, 1, 1, w)
        code = level * 10000 + a * 1000 + k * 100 + y * 10 + x
        outputs.append(code.reshape(1, num_anchors * channels, h, w).float())
    flat = flatten_level_outputs(outputs, channels)
    assert flat.shape == (1, (24 + 6) * num_anchors, channels)
    # Anchor n = (y * W + x) * A + a within a level; levels follow each other.
    n = (2 * 6 + 5) * num_anchors + 1  # level 0, y 2, x 5, a 1
    assert flat[0, n].tolist() == [1000 + 25, 1000 + 100 + 25]
    n = 24 * num_anchors + (1 * 3 + 2) * num_anchors + 2  # level 1, y 1, x 2, a 2
    assert flat[0, n].tolist() == [10000 + 2000 + 12, 10000 + 2000 + 100 + 12]


def test_flatten_level_outputs_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="A \\* 4"):
        flatten_level_outputs([torch.zeros(1, 6, 2, 2)], 4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # effdet uses torch.jit.script
def test_decode_matches_effdet() -> None:
    from effdet.anchors import decode_box_outputs

    anchors = generate_anchors((128, 256), 3, 7, AnchorConfig())
    g = torch.Generator().manual_seed(3)
    deltas = torch.randn(anchors.shape[0], 4, generator=g) * 0.5
    anchors_yxyx = anchors[:, [1, 0, 3, 2]]
    theirs = decode_box_outputs(deltas, anchors_yxyx, output_xyxy=True)
    torch.testing.assert_close(decode(deltas, anchors), theirs, rtol=1e-5, atol=1e-3)
