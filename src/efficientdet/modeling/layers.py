"""Building blocks shared by the neck and the heads: activations, conv + BN, separable
convs, SAME-padded max-pooling and resizing between pyramid levels.

Each layer initialises its own parameters (STYLE.md: no initialisation by name matching).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ACTIVATIONS, PADDINGS

# Initialisation schemes a conv layer can own.
INIT_GLOROT = "glorot"  # TF's default for conv kernels (the BiFPN's).
INIT_VARIANCE_SCALING = "variance_scaling"  # TF's variance scaling, fan-in (the heads').
_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def make_activation(name: str) -> nn.Module:
    """Activation module by name: ``swish`` (SiLU), ``relu6`` (Lite models) or ``relu``."""
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation {name!r} is not one of {', '.join(map(repr, ACTIVATIONS))}")


def make_norm(channels: int, eps: float = 1e-3, momentum: float = 0.01) -> nn.BatchNorm2d:
    """BatchNorm with the official settings (TF decay 0.99 is PyTorch momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


def init_conv_(weight: Tensor, scheme: str) -> None:
    """Initialise a conv kernel ``Tensor[out, in / groups, kh, kw]`` in place."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    if scheme == INIT_GLOROT:
        nn.init.xavier_uniform_(weight)
    elif scheme == INIT_VARIANCE_SCALING:
        std = math.sqrt(1.0 / max(1.0, fan_in)) / _TRUNC_NORMAL_STD
        nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")


class ConvBn(nn.Module):
    """``k x k`` conv followed by optional BN (no activation). Stride 1, symmetric padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        bias: bool = False,
        norm: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        init: str = INIT_GLOROT,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.bn = make_norm(out_channels, bn_eps, bn_momentum) if norm else None
        init_conv_(self.conv.weight, init)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x


class SeparableConv(nn.Module):
    """Depthwise ``k x k`` conv (no bias) then pointwise 1x1 conv, then optional BN.

    Stride 1 with symmetric padding, which equals TF SAME padding at stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        bias: bool = False,
        norm: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        init: str = INIT_GLOROT,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.bn = make_norm(out_channels, bn_eps, bn_momentum) if norm else None
        init_conv_(self.depthwise.weight, init)
        init_conv_(self.pointwise.weight, init)
        if self.pointwise.bias is not None:
            nn.init.constant_(self.pointwise.bias, bias_init)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pointwise(self.depthwise(x))
        return self.bn(x) if self.bn is not None else x


class MaxPoolDown(nn.Module):
    """Max-pool by ``factor`` (kernel ``factor + 1``, stride ``factor``).

    ``padding="same"`` pads like TensorFlow (extra cells on the bottom/right, filled with
    -inf) for any input size; ``"symmetric"`` pads ``factor // 2`` on every side, which gives
    the same output size for inputs divisible by ``factor``.
    """

    def __init__(self, factor: int = 2, padding: str = "same") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not one of {', '.join(map(repr, PADDINGS))}")
        self.factor = factor
        self.kernel_size = factor + 1
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size, self.factor
        if self.padding == "symmetric":
            return F.max_pool2d(x, k, s, padding=s // 2)
        h, w = x.shape[-2:]
        pad_h = max((-(-h // s) - 1) * s + k - h, 0)
        pad_w = max((-(-w // s) - 1) * s + k - w, 0)
        if s > 1 and pad_h % 2 == pad_w % 2:
            # Pooling's own -inf padding on both sides, plus ceil_mode's partial last window
            # for the odd extra cell on the bottom/right: TF's windows without a padded copy.
            return F.max_pool2d(x, k, s, padding=(pad_h // 2, pad_w // 2), ceil_mode=True)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-math.inf)
        return F.max_pool2d(x, k, s)


def upsample_nearest(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Nearest-neighbour resize of ``Tensor[B, C, h, w]`` to ``size = (H, W)``
    (PyTorch's ``"nearest"``: output cell ``i`` takes input cell ``floor(i * h / H)``).

    The pyramid's upsampling from a level's ``h = ceil(H / 2)`` to ``H`` (``H`` odd at
    Lite0's 320 px: 3 -> 5) is written as a 2x resize and a crop, which take the same cells
    (``floor(i * h / H) = floor(i / 2)`` there): a 2x resize means the same in every
    converter, while a converter may map a resize to an odd size to half-pixel centres
    (litert-torch does: cells ``floor((i + 0.5) * h / H)``).
    """
    height, width = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    if (height + 1) // 2 == h and (width + 1) // 2 == w:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if (height, width) == (2 * h, 2 * w) else x[:, :, :height, :width]
    return F.interpolate(x, size=(height, width), mode="nearest")
