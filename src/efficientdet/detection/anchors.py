"""Anchor boxes for a pyramid of feature maps (docs/model-reference.md, section 3).

Order is part of the weight format: levels from the lowest up; within a level, locations
row-major; within a location, octave scale is the outer loop and aspect ratio the inner
one, so anchor ``a = scale_index * num_ratios + ratio_index``. That matches the official
heads, whose class channel is ``a * num_classes + c`` and box channel ``a * 4 + k``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import AnchorConfig, check_image_size, feature_sizes


def anchor_shapes(image_size: tuple[int, int], level: int, config: AnchorConfig) -> Tensor:
    """``Tensor[A, 2]`` float64 widths and heights of one level's anchors in input pixels, in
    the head's order (octave scale outer, aspect ratio inner).

    The stride is ``side / feature_side`` per axis: ``2 ** level`` when the side is a multiple
    of it, fractional otherwise (as the official code does for Lite0's 320 px input).
    """
    grid_h, grid_w = feature_sizes(image_size, level)[level]
    stride_y, stride_x = image_size[0] / grid_h, image_size[1] / grid_w
    sizes = []
    for scale_index in range(config.num_scales):
        octave = 2 ** (scale_index / config.num_scales)
        for ratio_w, ratio_h in config.aspect_ratios:
            sizes.append(
                (config.anchor_scale * stride_x * octave * ratio_w,
                 config.anchor_scale * stride_y * octave * ratio_h)
            )
    return torch.tensor(sizes, dtype=torch.float64)


def level_anchors(
    level: int, image_size: tuple[int, int], config: AnchorConfig, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Anchors of one level as ``Tensor[H_l * W_l * A, 4]``, xyxy in input pixels, centred on
    the cells of the level's grid (strides as in :func:`anchor_shapes`)."""
    height, width = image_size
    grid_h, grid_w = feature_sizes(image_size, level)[level]
    stride_y, stride_x = height / grid_h, width / grid_w
    wh = anchor_shapes(image_size, level, config)  # [A, 2]
    cy = (torch.arange(grid_h, dtype=torch.float64) + 0.5) * stride_y
    cx = (torch.arange(grid_w, dtype=torch.float64) + 0.5) * stride_x
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [HW, 1, 2] row-major
    half = wh.unsqueeze(0) / 2.0
    boxes = torch.cat([centres - half, centres + half], dim=-1)  # [HW, A, 4]
    return boxes.reshape(-1, 4).to(dtype)


def generate_anchors(
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    config: AnchorConfig,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """All anchors for an input of ``image_size = (H, W)`` as ``Tensor[N, 4]`` xyxy pixels.

    ``N = sum_l H_l * W_l * A`` with ``H_l = ceil(H / 2**l)``.
    """
    check_image_size(image_size, max_level)
    return torch.cat(
        [level_anchors(lv, image_size, config, dtype) for lv in range(min_level, max_level + 1)]
    )


class Anchors(torch.nn.Module):
    """Anchors for one configuration, cached per input size and device.

    Call with ``(H, W)`` to get ``Tensor[N, 4]`` xyxy anchors. The cache is not part of the
    state dict.
    """

    def __init__(self, min_level: int, max_level: int, config: AnchorConfig) -> None:
        super().__init__()
        self.min_level = min_level
        self.max_level = max_level
        self.config = config
        self._cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return self.config.num_anchors

    def forward(
        self,
        image_size: tuple[int, int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        key = (int(image_size[0]), int(image_size[1]), str(device), dtype)
        if key not in self._cache:
            anchors = generate_anchors(key[:2], self.min_level, self.max_level, self.config, dtype)
            self._cache[key] = anchors.to(device)
        return self._cache[key]

    def num_anchors_per_level(self, image_size: tuple[int, int]) -> list[int]:
        """``[H_l * W_l * A for each level]`` for an input of ``image_size``."""
        sizes = feature_sizes(image_size, self.max_level)
        return [
            sizes[lv][0] * sizes[lv][1] * self.num_anchors
            for lv in range(self.min_level, self.max_level + 1)
        ]
