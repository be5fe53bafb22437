"""Mosaic: four training images in one (YOLOv4's augmentation; ultralytics' and mmdetection's
``Mosaic``).

The output has the network's input size ``H x W``. A centre ``(cx, cy)`` is drawn inside it;
each of the four images is resized to fit ``H x W`` (the evaluation letterbox's factor
``min(H / h, W / w)``) and placed with one corner at the centre: the first image above and to
the left of it, the second above and to the right, the third below and to the left, the
fourth below and to the right. Each image shows only the part of it that falls inside the
output (its quadrant), so the four never overlap; the rest of the output keeps the fill
colour (the mean colour: 0 after normalisation, like the training transform's padding).

A box moves with its image, is clipped to the part of the image that shows, and is dropped
when the clipped box is narrower or shorter than ``min_side`` pixels or keeps less than
``min_visible`` of its area (:func:`clip_boxes`). The result is an ordinary uint8 image with
its boxes, which the training transform (flip, scale jitter, crop) then augments like any
other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

MIN_SIDE = 2.0  # px: a box cut narrower or shorter than this is dropped
MIN_VISIBLE = 0.25  # a box cut to less than this share of its area is dropped
# Where each image sits against the centre: (left of it, above it), in the order above.
CORNERS = ((True, True), (False, True), (True, False), (False, False))


class LabelledImage(NamedTuple):
    """An image with its annotations, before the training transform.

    Attributes:
        image: ``Tensor[3, h, w]`` uint8 RGB.
        boxes: ``Tensor[N, 4]`` float32 xyxy in the image's pixels.
        labels: ``Tensor[N]`` int64.
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Tile:
    """Where one image of a mosaic goes.

    Attributes:
        resized: ``(h, w)`` of the image after resizing.
        origin: ``(x, y)`` of the resized image's top-left corner in the output (may be
            negative: that part is cut off).
        window: ``(x0, y0, x1, y1)`` of the part of the output the image covers (empty when
            ``x1 <= x0`` or ``y1 <= y0``).
    """

    resized: tuple[int, int]
    origin: tuple[int, int]
    window: tuple[int, int, int, int]


def mosaic_layout(
    sizes: Sequence[tuple[int, int]], output_size: tuple[int, int], centre: tuple[int, int]
) -> list[Tile]:
    """The tiles of four images of ``sizes`` (each ``(h, w)``) in an ``output_size`` ``(H, W)``
    mosaic whose images meet at ``centre`` ``(cx, cy)``, in the order of :data:`CORNERS`."""
    if len(sizes) != len(CORNERS):
        raise ValueError(f"a mosaic takes {len(CORNERS)} images, got {len(sizes)}")
    out_h, out_w = output_size
    cx, cy = centre
    if not (0 <= cx <= out_w and 0 <= cy <= out_h):
        raise ValueError(f"the centre {centre} is outside the {out_w} x {out_h} output")
    tiles = []
    for (h, w), (left, above) in zip(sizes, CORNERS, strict=True):
        scale = min(out_h / h, out_w / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        x, y = (cx - new_w if left else cx), (cy - new_h if above else cy)
        window = (max(x, 0), max(y, 0), min(x + new_w, out_w), min(y + new_h, out_h))
        tiles.append(Tile((new_h, new_w), (x, y), window))
    return tiles


def clip_boxes(
    boxes: Tensor, window: Sequence[float], *, min_side: float = MIN_SIDE,
    min_visible: float = MIN_VISIBLE,
) -> tuple[Tensor, Tensor]:
    """Clip ``Tensor[N, 4]`` xyxy boxes to ``window`` ``(x0, y0, x1, y1)``.

    Returns:
        ``(clipped Tensor[N, 4], keep Tensor[N] bool)``: a box is kept when its clipped width
        and height are at least ``min_side`` and its clipped area at least ``min_visible``
        times its own.
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    low = boxes.new_tensor([x0, y0, x0, y0])
    high = boxes.new_tensor([x1, y1, x1, y1])
    clipped = torch.minimum(torch.maximum(boxes, low), high)
    sides = clipped[:, 2:] - clipped[:, :2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (sides >= min_side).all(dim=1) & (sides.prod(dim=1) >= min_visible * area)
    return clipped, keep


def mosaic(
    images: Sequence[LabelledImage],
    output_size: tuple[int, int],
    centre: tuple[int, int],
    *,
    fill: Sequence[int] = (0, 0, 0),
    min_side: float = MIN_SIDE,
    min_visible: float = MIN_VISIBLE,
) -> LabelledImage:
    """Four images in one ``output_size`` ``(H, W)`` image meeting at ``centre`` (see the
    module docstring); boxes follow their image, clipped and dropped by :func:`clip_boxes`.

    Args:
        images: four images with their boxes, in the order of :data:`CORNERS`.
        fill: the RGB colour of the output that no image covers.

    Returns:
        The mosaic: ``Tensor[3, H, W]`` uint8 and its boxes (the first image's first, ...).
    """
    out_h, out_w = output_size
    canvas = torch.tensor([int(c) for c in fill], dtype=torch.uint8).view(3, 1, 1).repeat(1, out_h, out_w)
    tiles = mosaic_layout([(int(i.image.shape[-2]), int(i.image.shape[-1])) for i in images], output_size, centre)
    boxes, labels = [], []
    for item, tile in zip(images, tiles, strict=True):
        (x, y), (wx0, wy0, wx1, wy1) = tile.origin, tile.window
        if wx1 <= wx0 or wy1 <= wy0:
            continue
        h, w = int(item.image.shape[-2]), int(item.image.shape[-1])
        new_h, new_w = tile.resized
        pixels = item.image if (new_h, new_w) == (h, w) else F.resize(item.image, [new_h, new_w], antialias=True)
        canvas[:, wy0:wy1, wx0:wx1] = pixels[:, wy0 - y : wy1 - y, wx0 - x : wx1 - x]
        factors = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h])
        moved = item.boxes.reshape(-1, 4).float() * factors + torch.tensor([x, y, x, y], dtype=torch.float32)
        clipped, keep = clip_boxes(moved, tile.window, min_side=min_side, min_visible=min_visible)
        boxes.append(clipped[keep])
        labels.append(item.labels.reshape(-1)[keep])
    return LabelledImage(
        canvas,
        torch.cat(boxes) if boxes else torch.zeros(0, 4),
        torch.cat(labels).to(torch.int64) if labels else torch.zeros(0, dtype=torch.int64),
    )
