"""Feature networks (necks): each maps backbone features to a pyramid of one width.

Every neck takes ``in_channels`` per level and the model configuration, and returns one
``Tensor[B, fpn_channels, H_l, W_l]`` per level from ``min_level`` to ``max_level``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ...config import ModelConfig
from .asff import ASFF
from .bfp import BalancedFeaturePyramid
from .bifpn import BiFPN, GraphNeck
from .fpn import FPN, PAFPN, ExactFusionFPN, FullyConnectedFPN
from .graph import (
    FusionCell,
    FusionNode,
    NodeSpec,
    bifpn_nodes,
    cell_output_ids,
    efm_nodes,
    fpn_nodes,
    fully_connected_nodes,
    pafpn_nodes,
)
from .mlfpn import MLFPN
from .nasfpn import NASFPN, nasfpn_nodes

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


def _graph_builder(neck: Callable[..., nn.Module]) -> NeckBuilder:
    """A builder for a neck class with the ``(in_channels, min, max, width, repeats)``
    signature and fusion-node options."""

    def build(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
        return neck(
            in_channels,
            config.min_level,
            config.max_level,
            config.fpn_channels,
            config.fpn_repeats,
            **node_kwargs(config),
        )

    return build


def _build_bfp(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
    return BalancedFeaturePyramid(
        in_channels,
        config.fpn_channels,
        config.fpn_repeats,
        padding=config.padding,
        separable=config.separable,
        act=config.act,
        redundant_bias=config.redundant_bias,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
    )


def _build_mlfpn(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
    return MLFPN(
        in_channels,
        config.fpn_channels,
        config.fpn_repeats,
        separable=config.separable,
        act=config.act,
        redundant_bias=config.redundant_bias,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
    )


def _build_asff(config: ModelConfig, in_channels: Sequence[int]) -> nn.Module:
    return ASFF(
        in_channels,
        config.min_level,
        config.max_level,
        config.fpn_channels,
        config.fpn_repeats,
        fusion=config.fusion,
        act=config.act,
        padding=config.padding,
        redundant_bias=config.redundant_bias,
        separable=config.separable,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
    )


# ``fpn_repeats`` is the number of cells (graph necks, NAS-FPN, ASFF's FPN), balanced steps
# (BFP) or TUMs (MLFPN); ``fusion`` weights the graph necks' fusion nodes (not NAS-FPN's
# merges, BFP's average, MLFPN's concatenation or ASFF's own per-pixel weights).
NECKS: dict[str, NeckBuilder] = {
    "bifpn": _build_bifpn,
    "fpn": _graph_builder(FPN),
    "pafpn": _graph_builder(PAFPN),
    "fcfpn": _graph_builder(FullyConnectedFPN),
    "nasfpn": _graph_builder(NASFPN),
    "efm": _graph_builder(ExactFusionFPN),
    "bfp": _build_bfp,
    "mlfpn": _build_mlfpn,
    "asff": _build_asff,
}


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
    "ASFF",
    "FPN",
    "MLFPN",
    "NASFPN",
    "NECKS",
    "PAFPN",
    "BalancedFeaturePyramid",
    "BiFPN",
    "ExactFusionFPN",
    "FullyConnectedFPN",
    "FusionCell",
    "FusionNode",
    "GraphNeck",
    "NodeSpec",
    "bifpn_nodes",
    "build_neck",
    "cell_output_ids",
    "efm_nodes",
    "fpn_nodes",
    "fully_connected_nodes",
    "nasfpn_nodes",
    "node_kwargs",
    "pafpn_nodes",
]
