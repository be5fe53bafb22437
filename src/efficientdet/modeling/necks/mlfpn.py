"""MLFPN, the multi-level feature pyramid of M2Det (Zhao et al., AAAI 2019, arXiv 1811.04533).

FFMv1 fuses backbone features into a *base feature* at the lowest level; a stack of thinned
U-shape modules (TUMs) each turn (a 1x1 reduction of) the base feature, concatenated with
the previous TUM's largest output (FFMv2), into a pyramid; SFAM concatenates the TUMs'
outputs level by level and reweights the channels with squeeze-and-excitation attention.

M2Det's numbers (VGG, 512 px) with ``planes = 256``: base feature 768 channels = 256
(shallow, 3x3 conv) + 512 (deep, 1x1 conv, upsampled); FFMv2 reduces the base to 128 with a
1x1 conv (one module shared by all TUMs in the released code) and concatenates the previous
TUM's 256-channel largest output; each TUM is 256 wide and outputs 6 scales; 8 TUMs; SFAM's
squeeze-excitation reduces by 16. Scaled here to ``planes = width``:

* FFMv1: the lowest input level (P3) -> 3x3 conv to ``width``; every higher input level ->
  1x1 conv to ``2 * width`` and nearest upsampling to P3's size, summed (M2Det fuses one
  deeper stage; summing all of them keeps every input in use, P6/P7 included) -> concat,
  ``3 * width`` channels at P3.
* FFMv2: 1x1 conv ``3 * width -> width // 2`` (shared), concat the previous TUM's P3 output.
* TUM: ``width`` channels, one output per configured level (P3-P7: 5 scales, 4 stride-2
  convs; each maps H to ceil(H / 2), so any pyramid size works), M2Det's decoder: 1x1 conv on
  the smallest scale, then for each larger scale nearest-upsample + 3x3 lateral conv, then a
  1x1 smoothing conv on every decoder output but the smallest.
* Number of TUMs = ``repeats`` (``fpn_repeats``; M2Det uses 8).
* SFAM: per level, concat the TUMs' outputs (``repeats * width`` channels), then global
  average pool -> 1x1 conv (/16) -> ReLU -> 1x1 conv -> sigmoid -> channel reweighting (the
  paper's per-scale attention; the released code shares one module across scales). Then a
  1x1 conv + BN to ``width`` so the class/box heads see the BiFPN width (M2Det's heads read
  the ``8 * 256`` channels directly).
* Every conv is conv -> BN -> act (M2Det: ReLU; here ``act``), and the 3x3 convs are
  depthwise-separable when ``separable`` (EfficientDet's feature networks all are).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...config import ModelConfig
from ..layers import ConvBn, upsample_nearest
from .blocks import ConvNormAct

SE_REDUCTION = 16


class TUM(nn.Module):
    """Thinned U-shape module: encoder of stride-2 3x3 convs, decoder with lateral convs.

    Input ``Tensor[B, in_channels, H, W]`` at the lowest level; output ``num_scales`` tensors
    ``Tensor[B, width, H_s, W_s]`` with ``H_0 = H`` and ``H_{s+1} = ceil(H_s / 2)``, largest first.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        num_scales: int,
        *,
        separable: bool = True,
        act: str = "swish",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if num_scales < 2:
            raise ValueError(f"a TUM needs at least 2 scales, got {num_scales}")

        def conv(c_in: int, kernel_size: int, stride: int = 1) -> ConvNormAct:
            return ConvNormAct(
                c_in, width, kernel_size, stride=stride, separable=separable, act=act,
                bn_eps=bn_eps, bn_momentum=bn_momentum,
            )

        self.encoder = nn.ModuleList(
            conv(in_channels if s == 0 else width, 3, stride=2) for s in range(num_scales - 1)
        )
        self.top = conv(width, 1)
        # lateral[s] reads encoder feature s (s = 0 is the module's input itself).
        self.lateral = nn.ModuleList(
            conv(in_channels if s == 0 else width, 3) for s in range(num_scales - 1)
        )
        self.smooth = nn.ModuleList(conv(width, 1) for _ in range(num_scales - 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        encoded = [x]
        for conv in self.encoder:
            encoded.append(conv(encoded[-1]))
        decoded = [self.top(encoded[-1])]
        for s in range(len(self.lateral) - 1, -1, -1):
            lateral = self.lateral[s](encoded[s])
            decoded.insert(0, upsample_nearest(decoded[0], lateral.shape[-2:]) + lateral)
        return [smooth(d) for smooth, d in zip(self.smooth, decoded[:-1], strict=True)] + [
            decoded[-1]
        ]


class SFAM(nn.Module):
    """Scale-wise feature aggregation: per level, squeeze-and-excitation channel attention on
    ``Tensor[B, channels, H_l, W_l]`` (the TUMs' outputs concatenated)."""

    def __init__(self, channels: int, num_levels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.ModuleList(nn.Conv2d(channels, hidden, 1) for _ in range(num_levels))
        self.excite = nn.ModuleList(nn.Conv2d(hidden, channels, 1) for _ in range(num_levels))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for x, squeeze, excite in zip(features, self.squeeze, self.excite, strict=True):
            w = torch.relu(squeeze(x.mean(dim=(2, 3), keepdim=True)))
            out.append(x * torch.sigmoid(excite(w)))
        return out


class MLFPN(nn.Module):
    """FFMv1 -> ``repeats`` TUMs joined by FFMv2 -> SFAM -> 1x1 conv + BN to ``width``.

    Input: one ``Tensor[B, C_l, H_l, W_l]`` per level, lowest first (at least two levels).
    Output: one ``Tensor[B, width, H_l, W_l]`` per level, sizes taken from the inputs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int,
        repeats: int,
        *,
        separable: bool = True,
        act: str = "swish",
        redundant_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        num_levels = len(in_channels)
        if num_levels < 2:
            raise ValueError(f"MLFPN needs at least two input levels, got {num_levels}")

        def conv(c_in: int, c_out: int, kernel_size: int) -> ConvNormAct:
            return ConvNormAct(
                c_in, c_out, kernel_size, separable=separable, act=act, bn_eps=bn_eps,
                bn_momentum=bn_momentum,
            )

        self.shallow = conv(in_channels[0], width, 3)
        self.deep = nn.ModuleList(conv(c, 2 * width, 1) for c in in_channels[1:])
        reduced = max(1, width // 2)
        self.reduce = conv(3 * width, reduced, 1)
        self.tums = nn.ModuleList(
            TUM(
                reduced if t == 0 else reduced + width, width, num_levels, separable=separable,
                act=act, bn_eps=bn_eps, bn_momentum=bn_momentum,
            )
            for t in range(repeats)
        )
        self.sfam = SFAM(repeats * width, num_levels)
        self.out_projs = nn.ModuleList(
            ConvBn(repeats * width, width, 1, bias=redundant_bias, bn_eps=bn_eps, bn_momentum=bn_momentum)
            for _ in range(num_levels)
        )
        self.out_channels = [width] * num_levels

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: Sequence[int]) -> MLFPN:
        """M2Det's pyramid at ``config.fpn_channels`` with ``config.fpn_repeats`` TUMs."""
        return cls(
            in_channels, config.fpn_channels, config.fpn_repeats, separable=config.separable,
            act=config.act, redundant_bias=config.redundant_bias, bn_eps=config.bn_eps,
            bn_momentum=config.bn_momentum,
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        sizes = [x.shape[-2:] for x in features]
        deep = None
        for proj, x in zip(self.deep, features[1:], strict=True):
            up = upsample_nearest(proj(x), sizes[0])
            deep = up if deep is None else deep + up
        assert deep is not None
        base = torch.cat([self.shallow(features[0]), deep], dim=1)  # FFMv1
        reduced = self.reduce(base)
        levels: list[list[Tensor]] = [[] for _ in features]
        previous = None
        for tum in self.tums:
            x = reduced if previous is None else torch.cat([reduced, previous], dim=1)  # FFMv2
            outs = tum(x)
            for s, (o, size) in enumerate(zip(outs, sizes, strict=True)):
                if o.shape[-2:] != size:
                    raise ValueError(
                        f"TUM scale {s} is {tuple(o.shape[-2:])}, but input level {s} is "
                        f"{tuple(size)}: levels must halve (rounding up) from the lowest"
                    )
                levels[s].append(o)
            previous = outs[0]
        aggregated = self.sfam([torch.cat(group, dim=1) for group in levels])
        return [proj(x) for proj, x in zip(self.out_projs, aggregated, strict=True)]
