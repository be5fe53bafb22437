"""Box formats, box coding and the layout of per-level head outputs (docs/model-reference.md, section 3).

One convention inside the library: boxes are ``xyxy`` in absolute pixels of the network
input. Box regression uses Faster R-CNN deltas without scale factors, in the official
order ``(dy, dx, dh, dw)`` so that official weights decode unchanged::

    dy = (cy - cya) / ha    dx = (cx - cxa) / wa    dh = log(h / ha)    dw = log(w / wa)
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

# Largest dh/dw accepted on decoding: exp() of it scales an anchor side by 1000/16 at most,
# so a wild prediction cannot overflow to inf (the same bound torchvision's box coder uses).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)

# Smallest side used when encoding, so degenerate boxes give finite deltas instead of -inf.
ENCODE_EPS = 1e-8


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` ``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` (top-left corner, COCO style)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` ``(x, y, w, h)`` (top-left corner) -> ``(x1, y1, x2, y2)``."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` ``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` (centre and size)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` ``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def clip_boxes(boxes: Tensor, size: tuple[int, int] | tuple[float, float]) -> Tensor:
    """Clip ``Tensor[..., 4]`` xyxy boxes to an image of ``size = (H, W)`` pixels.

    x is clamped to ``[0, W]`` and y to ``[0, H]``. Returns a new tensor.
    """
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)],
        dim=-1,
    )


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``Tensor[..., 4]`` xyxy boxes as ``Tensor[...]``; inverted boxes count as 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``Tensor[M, 4]`` and ``Tensor[N, 4]`` xyxy boxes -> ``Tensor[M, N]``."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching pairs: ``Tensor[..., 4]`` with ``Tensor[..., 4]`` (broadcast) -> ``Tensor[...]``.

    Pairs whose union is empty have IoU 0.
    """
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets of xyxy ``boxes`` relative to xyxy ``anchors``.

    Args:
        boxes: ``Tensor[..., 4]`` xyxy, broadcastable with ``anchors``.
        anchors: ``Tensor[..., 4]`` xyxy.

    Returns:
        ``Tensor[..., 4]`` deltas in the official order ``(dy, dx, dh, dw)``. Sides are floored
        at :data:`ENCODE_EPS` so degenerate boxes give large but finite values.
    """
    cx, cy, w, h = xyxy_to_cxcywh(boxes).unbind(-1)
    cxa, cya, wa, ha = xyxy_to_cxcywh(anchors).unbind(-1)
    wa = wa.clamp(min=ENCODE_EPS)
    ha = ha.clamp(min=ENCODE_EPS)
    dy = (cy - cya) / ha
    dx = (cx - cxa) / wa
    dh = torch.log(h.clamp(min=ENCODE_EPS) / ha)
    dw = torch.log(w.clamp(min=ENCODE_EPS) / wa)
    return torch.stack([dy, dx, dh, dw], dim=-1)


def decode(deltas: Tensor, anchors: Tensor, clamp: float = BBOX_XFORM_CLIP) -> Tensor:
    """Inverse of :func:`encode`: apply ``(dy, dx, dh, dw)`` deltas to xyxy anchors.

    Args:
        deltas: ``Tensor[..., 4]`` in the order ``(dy, dx, dh, dw)``.
        anchors: ``Tensor[..., 4]`` xyxy, broadcastable with ``deltas``.
        clamp: ``dh`` and ``dw`` are clamped to at most this value before ``exp``.

    Returns:
        ``Tensor[..., 4]`` xyxy boxes in the anchors' pixel frame.
    """
    dy, dx, dh, dw = deltas.unbind(-1)
    cxa, cya, wa, ha = xyxy_to_cxcywh(anchors).unbind(-1)
    cx = dx * wa + cxa
    cy = dy * ha + cya
    w = torch.exp(dw.clamp(max=clamp)) * wa
    h = torch.exp(dh.clamp(max=clamp)) * ha
    return cxcywh_to_xyxy(torch.stack([cx, cy, w, h], dim=-1))


def flatten_level_outputs(outputs: list[Tensor] | tuple[Tensor, ...], channels: int) -> Tensor:
    """Concatenate per-level head outputs in anchor order.

    Args:
        outputs: one ``Tensor[B, A * channels, H_l, W_l]`` per level, lowest level first,
            channel ``a * channels + k`` for anchor ``a`` of a location.
        channels: values per anchor (``num_classes`` for class outputs, 4 for boxes).

    Returns:
        ``Tensor[B, N, channels]`` with ``N = sum_l H_l * W_l * A``, ordered like
        :func:`efficientdet.detection.anchors.generate_anchors` (levels, then row-major locations,
        then anchors of a location).
    """
    if len(outputs) == 0:
        raise ValueError("expected at least one level of head outputs, got none")
    flat = []
    for level, out in enumerate(outputs):
        if out.dim() != 4 or out.shape[1] % channels:
            raise ValueError(
                f"head output of level index {level} has shape {tuple(out.shape)}; expected "
                f"[B, A * {channels}, H, W]"
            )
        batch = out.shape[0]
        flat.append(out.permute(0, 2, 3, 1).reshape(batch, -1, channels))
    return torch.cat(flat, dim=1)
