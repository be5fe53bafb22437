"""Feature networks (necks): each maps backbone features to a pyramid of one width.

Every neck takes ``in_channels`` per level and the model configuration, and returns one
``Tensor[B, fpn_channels, H_l, W_l]`` per level from ``min_level`` to ``max_level``. The
graph-shaped necks are one module, :class:`GraphNeck`, over a node list from
:data:`TOPOLOGIES`; the others are their own modules. :data:`NECKS` names them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from ...config import ModelConfig
from .asff import ASFF
from .bfp import BalancedFeaturePyramid
from .graph import (
    TOPOLOGIES,
    FusionCell,
    FusionNode,
    GraphNeck,
    NodeSpec,
    bifpn_nodes,
    cell_output_ids,
    efm_nodes,
    fpn_nodes,
    fully_connected_nodes,
    node_options,
    pafpn_nodes,
)
from .mlfpn import MLFPN
from .nasfpn import NASFPN, nasfpn_nodes

NeckBuilder = Callable[[ModelConfig, Sequence[int]], nn.Module]

# ``fpn_repeats`` is the number of cells (graph necks, NAS-FPN, ASFF's FPN), balanced steps
# (BFP) or TUMs (MLFPN); ``fusion`` weights the graph necks' fusion nodes (not NAS-FPN's
# merges, BFP's average, MLFPN's concatenation or ASFF's own per-pixel weights).
NECKS: dict[str, NeckBuilder] = {
    **{name: partial(GraphNeck.from_config, topology=name) for name in TOPOLOGIES},
    "nasfpn": NASFPN.from_config,
    "bfp": BalancedFeaturePyramid.from_config,
    "mlfpn": MLFPN.from_config,
    "asff": ASFF.from_config,
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
    "MLFPN",
    "NASFPN",
    "NECKS",
    "TOPOLOGIES",
    "BalancedFeaturePyramid",
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
    "node_options",
    "pafpn_nodes",
]
