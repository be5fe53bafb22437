"""ASFF: adaptively spatial feature fusion (Liu, Huang, Wang, arXiv 1911.09516).

As in the paper, ASFF sits on top of a feature pyramid: it was shown on YOLOv3's top-down
FPN. Here the pyramid is this project's repeated top-down FPN (``base="fpn"``, default; or
FPN + PANet with ``base="pafpn"``), ``repeats`` cells at ``width`` on the shared fusion
node, followed by one ASFF module. For each output level ``l`` ASFF:

1. resizes every pyramid level to ``l``: downsampling by 2 is a 3x3 stride-2 conv; by 4 (and,
   extending the paper's three levels to five, by 8 and 16) max-pool 3/2 steps first, then
   the stride-2 conv; upsampling is a 1x1 conv then nearest resizing to ``l``'s actual size;
2. computes per-pixel weights: a 1x1 conv to ``compress`` (16, the paper's code) channels per
   resized level, concatenated, then a 1x1 conv to one logit per level, softmax over levels;
3. fuses ``sum_j w_j * x_j`` and applies a 3x3 conv (ASFF's "expand").

Every conv is conv -> BN -> act (the paper: leaky ReLU; here ``act``), and 3x3 convs are
depthwise-separable when ``separable``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...config import ModelConfig
from ..layers import MaxPoolDown, upsample_nearest
from .blocks import ConvNormAct
from .graph import GraphNeck, fpn_nodes, node_options, pafpn_nodes

ASFF_COMPRESS = 16
ASFF_BASES = {"fpn": fpn_nodes, "pafpn": pafpn_nodes}


class ASFFLevel(nn.Module):
    """Adaptive fusion of all ``num_levels`` pyramid features at level index ``target``.

    Input: one ``Tensor[B, width, H_l, W_l]`` per level. Output: ``Tensor[B, width, H_t, W_t]``.
    """

    def __init__(
        self,
        target: int,
        num_levels: int,
        width: int,
        *,
        compress: int = ASFF_COMPRESS,
        padding: str = "same",
        separable: bool = True,
        act: str = "swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> ConvNormAct:
            return ConvNormAct(
                c_in, c_out, kernel_size, stride=stride, separable=separable, act=act,
                bn_eps=bn_eps, bn_momentum=bn_momentum,
            )

        self.target = target
        self.resize = nn.ModuleList()
        for source in range(num_levels):
            if source < target:  # larger map: pool (target - source - 1) times, then conv /2
                steps: list[nn.Module] = [
                    MaxPoolDown(2, padding) for _ in range(target - source - 1)
                ]
                self.resize.append(nn.Sequential(*steps, conv(width, width, 3, stride=2)))
            elif source > target:  # smaller map: 1x1 conv here, nearest upsampling in forward
                self.resize.append(conv(width, width, 1))
            else:
                self.resize.append(nn.Identity())
        self.weight_convs = nn.ModuleList(conv(width, compress, 1) for _ in range(num_levels))
        self.weight_logits = nn.Conv2d(compress * num_levels, num_levels, 1)
        self.expand = conv(width, width, 3)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[self.target].shape[-2:]
        resized = []
        for source, (x, resize) in enumerate(zip(features, self.resize, strict=True)):
            x = resize(x)
            if source > self.target:
                x = upsample_nearest(x, size)
            resized.append(x)
        logits = self.weight_logits(
            torch.cat([conv(x) for conv, x in zip(self.weight_convs, resized, strict=True)], dim=1)
        )
        weights = torch.softmax(logits, dim=1)  # [B, num_levels, H_t, W_t]
        fused = resized[0] * weights[:, 0:1]
        for j in range(1, len(resized)):
            fused = fused + resized[j] * weights[:, j : j + 1]
        return self.expand(fused)


class ASFF(nn.Module):
    """A repeated FPN (or PAFPN) pyramid followed by adaptively spatial feature fusion.

    Input: one ``Tensor[B, C_l, H_l, W_l]`` per level, lowest first. Output: one
    ``Tensor[B, width, H_l, W_l]`` per level.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        *,
        base: str = "fpn",
        compress: int = ASFF_COMPRESS,
        fusion: str = "fast",
        act: str = "swish",
        padding: str = "same",
        redundant_bias: bool = True,
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if base not in ASFF_BASES:
            raise ValueError(f"base {base!r} is not one of {', '.join(map(repr, ASFF_BASES))}")
        self.pyramid = GraphNeck(
            ASFF_BASES[base](min_level, max_level), in_channels, min_level, max_level, width,
            repeats, fusion=fusion, act=act, padding=padding, redundant_bias=redundant_bias,
            separable=separable, bn_eps=bn_eps, bn_momentum=bn_momentum,
        )
        num_levels = max_level - min_level + 1
        self.levels = nn.ModuleList(
            ASFFLevel(
                t, num_levels, width, compress=compress, padding=padding, separable=separable,
                act=act, bn_eps=bn_eps, bn_momentum=bn_momentum,
            )
            for t in range(num_levels)
        )
        self.out_channels = [width] * num_levels

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: Sequence[int]) -> ASFF:
        """ASFF over a repeated FPN with ``config``'s levels, width, repeats and options."""
        return cls(
            in_channels, config.min_level, config.max_level, config.fpn_channels,
            config.fpn_repeats, **node_options(config),  # type: ignore[arg-type]
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        pyramid = self.pyramid(features)
        return [level(pyramid) for level in self.levels]
