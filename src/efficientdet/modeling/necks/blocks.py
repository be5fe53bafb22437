"""Conv blocks for the necks that are not fusion graphs (BFP, MLFPN, ASFF).

The graph necks' fusion node has its own conv; these are the plain ``conv -> BN -> act``
blocks that M2Det's, ASFF's and Libra R-CNN's modules are made of, with a stride and the
option of a depthwise-separable 3x3 (what EfficientDet uses in its feature network).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import INIT_GLOROT, init_conv_, make_activation, make_norm


class ConvNormAct(nn.Module):
    """``k x k`` conv with stride 1 or 2 -> BN -> optional activation.

    ``separable=True`` makes a ``k > 1`` conv depthwise (``k x k``, per channel) then pointwise
    (1x1); a 1x1 conv is always a plain conv. Padding is ``k // 2`` on every side, so a stride-2
    conv maps ``H`` to ``ceil(H / 2)``, the size of the next pyramid level.

    Input ``Tensor[B, in_channels, H, W]``; output ``Tensor[B, out_channels, H', W']`` with
    ``H' = ceil(H / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        separable: bool = False,
        act: str | None = "swish",
        bias: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        padding = kernel_size // 2
        layers: list[nn.Module] = []
        if separable and kernel_size > 1:
            layers.append(
                nn.Conv2d(
                    in_channels, in_channels, kernel_size, stride, padding,
                    groups=in_channels, bias=False,
                )
            )
            layers.append(nn.Conv2d(in_channels, out_channels, 1, bias=bias))
        else:
            layers.append(
                nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
            )
        for conv in layers:
            assert isinstance(conv, nn.Conv2d)
            init_conv_(conv.weight, INIT_GLOROT)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.conv = nn.Sequential(*layers)
        self.bn = make_norm(out_channels, bn_eps, bn_momentum)
        self.act = make_activation(act) if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
