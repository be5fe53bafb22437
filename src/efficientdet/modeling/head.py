"""Class and box prediction heads, shared across levels with BN kept per level."""

from __future__ import annotations

import math
from typing import cast

from torch import Tensor, nn

from .layers import INIT_VARIANCE_SCALING, SeparableConv, make_activation, make_norm

# Focal-loss prior: every anchor starts as background with probability 0.99.
CLASS_PRIOR_PROBABILITY = 0.01


class HeadNet(nn.Module):
    """``repeats`` x [3x3 separable conv shared across levels -> BN of this level -> act],
    then a shared separable prediction conv with ``num_outputs`` channels.

    Input: one ``Tensor[B, W, H_l, W_l]`` per level. Output: one ``Tensor[B, num_outputs,
    H_l, W_l]`` per level.
    """

    def __init__(
        self,
        width: int,
        num_outputs: int,
        repeats: int,
        num_levels: int,
        *,
        act: str = "swish",
        redundant_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            SeparableConv(width, width, 3, bias=redundant_bias, norm=False, init=INIT_VARIANCE_SCALING)
            for _ in range(repeats)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(make_norm(width, bn_eps, bn_momentum) for _ in range(repeats))
            for _ in range(num_levels)
        )
        self.act = make_activation(act)
        bias_init = (
            -math.log((1 - prior_probability) / prior_probability) if prior_probability else 0.0
        )
        self.predict = SeparableConv(
            width, num_outputs, 3, bias=True, norm=False, init=INIT_VARIANCE_SCALING,
            bias_init=bias_init,
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        outputs = []
        for x, norms in zip(features, self.norms, strict=True):
            for conv, norm in zip(self.convs, cast(nn.ModuleList, norms), strict=True):
                x = self.act(norm(conv(x)))
            outputs.append(self.predict(x))
        return outputs
