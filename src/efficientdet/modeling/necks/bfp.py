"""Balanced Feature Pyramid (Pang et al., Libra R-CNN, CVPR 2019, arXiv 1904.02701).

One balanced step: rescale every level to the size of one intermediate level, average them
into a single balanced feature, refine it (an embedded-Gaussian non-local block by default),
rescale it back to each level and add it to that level as a residual.

Adapted to this project's neck contract:

* Libra R-CNN applies the step once to an FPN's outputs, which all have the FPN width. Here
  it is the whole neck, so inputs whose channel count is not ``width`` (P3-P5 from the
  backbone) are first projected to ``width`` by a 1x1 conv + BN; the step is then repeated
  ``repeats`` times (``fpn_repeats``).
* The intermediate level is the middle one (``num_levels // 2``: P5 of P3-P7), as the paper
  picks C4 of C2-C5. Larger levels are brought to it by SAME max-pooling (Libra: adaptive max
  pooling, identical for exact factors of 2), smaller ones by nearest upsampling; back to a
  level the other way round. Sizes are the actual level sizes, so ceil-halved pyramids work.
* The non-local block follows Libra R-CNN's settings: embedded Gaussian, inner width equal
  to ``width`` (reduction 1), no ``1/sqrt(d)`` scaling, and an output 1x1 conv + BN whose BN
  scale starts at zero, so the block starts as the identity (as the non-local paper does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...config import ModelConfig
from ..layers import ConvBn, MaxPoolDown, upsample_nearest
from .blocks import ConvNormAct

REFINE_NON_LOCAL = "non_local"
REFINE_CONV = "conv"
REFINE_NONE = "none"
REFINE_METHODS = (REFINE_NON_LOCAL, REFINE_CONV, REFINE_NONE)


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) on ``Tensor[B, C, H, W]``.

    ``z = x + BN(W_z(softmax(theta(x)^T phi(x)) g(x)))`` with 1x1 convs ``theta``, ``phi``,
    ``g`` to ``inner`` channels and ``W_z`` back to ``C``. The output BN's scale starts at 0.
    """

    def __init__(
        self, channels: int, inner: int | None = None, *, bn_eps: float = 1e-3, bn_momentum: float = 0.01
    ) -> None:
        super().__init__()
        inner = inner or channels
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = ConvBn(inner, channels, 1, bias=False, bn_eps=bn_eps, bn_momentum=bn_momentum)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
        assert self.out.bn is not None
        nn.init.zeros_(self.out.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, N, inner]
        phi = self.phi(x).flatten(2)  # [B, inner, N]
        g = self.g(x).flatten(2).transpose(1, 2)  # [B, N, inner]
        attention = torch.softmax(torch.bmm(theta, phi), dim=-1)  # [B, N, N]
        y = torch.bmm(attention, g).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


class BalancedStep(nn.Module):
    """Gather all levels at level ``middle``, average, refine, scatter back as residuals."""

    def __init__(
        self,
        num_levels: int,
        width: int,
        *,
        refine: str = REFINE_NON_LOCAL,
        middle: int | None = None,
        padding: str = "same",
        separable: bool = True,
        act: str = "swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.middle = num_levels // 2 if middle is None else middle
        if not 0 <= self.middle < num_levels:
            raise ValueError(f"middle level index {self.middle} is outside 0..{num_levels - 1}")
        self.refine: nn.Module
        if refine == REFINE_NON_LOCAL:
            self.refine = NonLocal2d(width, bn_eps=bn_eps, bn_momentum=bn_momentum)
        elif refine == REFINE_CONV:
            self.refine = ConvNormAct(
                width, width, 3, separable=separable, act=act, bn_eps=bn_eps, bn_momentum=bn_momentum
            )
        elif refine == REFINE_NONE:
            self.refine = nn.Identity()
        else:
            raise ValueError(f"refine {refine!r} is not one of {', '.join(map(repr, REFINE_METHODS))}")
        # Levels below the middle are larger: max-pool them down by 2 ** (middle - i).
        self.gather_pools = nn.ModuleList(
            MaxPoolDown(2 ** (self.middle - i), padding) if i < self.middle else nn.Identity()
            for i in range(num_levels)
        )
        # Levels above the middle are smaller: max-pool the balanced feature down to them.
        self.scatter_pools = nn.ModuleList(
            MaxPoolDown(2 ** (i - self.middle), padding) if i > self.middle else nn.Identity()
            for i in range(num_levels)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``features``: one ``Tensor[B, width, H_l, W_l]`` per level; same shapes out."""
        size = features[self.middle].shape[-2:]
        total = None
        for i, (x, pool) in enumerate(zip(features, self.gather_pools, strict=True)):
            x = pool(x) if i < self.middle else x
            x = upsample_nearest(x, size) if i > self.middle else x
            total = x if total is None else total + x
        assert total is not None
        balanced = self.refine(total / len(features))
        out = []
        for i, (x, pool) in enumerate(zip(features, self.scatter_pools, strict=True)):
            if i < self.middle:
                residual = upsample_nearest(balanced, x.shape[-2:])
            elif i > self.middle:
                residual = pool(balanced)
            else:
                residual = balanced
            out.append(x + residual)
        return out


class BalancedFeaturePyramid(nn.Module):
    """Projections to ``width`` (1x1 conv + BN where needed), then ``repeats`` balanced steps.

    Input: one ``Tensor[B, C_l, H_l, W_l]`` per level, lowest first, ``C_l = in_channels[l]``.
    Output: one ``Tensor[B, width, H_l, W_l]`` per level.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int,
        repeats: int = 1,
        *,
        refine: str = REFINE_NON_LOCAL,
        padding: str = "same",
        separable: bool = True,
        act: str = "swish",
        redundant_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.projs = nn.ModuleList(
            ConvBn(c, width, 1, bias=redundant_bias, bn_eps=bn_eps, bn_momentum=bn_momentum)
            if c != width
            else nn.Identity()
            for c in in_channels
        )
        self.steps = nn.ModuleList(
            BalancedStep(
                len(in_channels), width, refine=refine, padding=padding, separable=separable,
                act=act, bn_eps=bn_eps, bn_momentum=bn_momentum,
            )
            for _ in range(repeats)
        )
        self.out_channels = [width] * len(in_channels)

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: Sequence[int]) -> BalancedFeaturePyramid:
        """The balanced pyramid at ``config.fpn_channels`` with ``config.fpn_repeats`` steps."""
        return cls(
            in_channels, config.fpn_channels, config.fpn_repeats, padding=config.padding,
            separable=config.separable, act=config.act, redundant_bias=config.redundant_bias,
            bn_eps=config.bn_eps, bn_momentum=config.bn_momentum,
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        features = [proj(x) for proj, x in zip(self.projs, features, strict=True)]
        for step in self.steps:
            features = step(features)
        return features
