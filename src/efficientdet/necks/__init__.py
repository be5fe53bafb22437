"""Feature networks (necks): each maps backbone features to a pyramid of one width.

Every neck takes ``in_channels`` per level and the model configuration, and returns one
``Tensor[B, fpn_channels, H_l, W_l]`` per level from ``min_level`` to ``max_level``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..config import ModelConfig
from .bifpn import BiFPN, GraphNeck
from .graph import FusionCell, FusionNode, NodeSpec, bifpn_nodes, cell_output_ids

NeckBuilder = Callable[[ModelConfig, Sequence[int]], nn.Module]


def node_kwargs(config: ModelConfig) -> dict[str, object]:
    """Fusion-node options shared by all graph-shaped necks."""
    return dict(
        fusion=config.fusion,
        act=config.act,
        padding=config.padding,
        redundant_bias=config.redundant_bias,
        separable=config.separable,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
    )


def _build_bifpn(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
    return BiFPN(
        in_channels,
        config.min_level,
        config.max_level,
        config.fpn_channels,
        config.fpn_repeats,
        **node_kwargs(config),
    )


NECKS: dict[str, NeckBuilder] = {"bifpn": _build_bifpn}


def build_neck(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
    """Build the neck named by ``config.neck`` for inputs with ``in_channels`` per level."""
    try:
        builder = NECKS[config.neck]
    except KeyError:
        raise ValueError(
            f"neck {config.neck!r} is not one of {', '.join(map(repr, sorted(NECKS)))}"
        ) from None
    return builder(config, in_channels)


__all__ = [
    "NECKS",
    "BiFPN",
    "FusionCell",
    "FusionNode",
    "GraphNeck",
    "NodeSpec",
    "bifpn_nodes",
    "build_neck",
    "cell_output_ids",
    "node_kwargs",
]
