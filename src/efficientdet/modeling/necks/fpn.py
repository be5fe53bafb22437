"""The graph-shaped members of the feature-pyramid family: top-down FPN, FPN + PANet, the
fully-connected FPN of the paper's ablation and CSPNet's Exact Fusion Model.

Each is a :class:`~efficientdet.modeling.necks.bifpn.GraphNeck`: ``repeats`` cells of one node list
from :mod:`efficientdet.modeling.necks.graph`, built from the same fusion node as BiFPN (resize each
input to the node's level, fuse with ``fusion`` weights, then act -> 3x3 separable conv ->
BN). As in the paper's Table 5, the repeated variants use depthwise-separable convolutions
and the BiFPN width. Input: one ``Tensor[B, C_l, H_l, W_l]`` per level, lowest first; output:
one ``Tensor[B, width, H_l, W_l]`` per level.
"""

from __future__ import annotations

from collections.abc import Sequence

from .bifpn import GraphNeck
from .graph import efm_nodes, fpn_nodes, fully_connected_nodes, pafpn_nodes


class FPN(GraphNeck):
    """Repeated top-down FPN (paper fig. 2a): one node per level, top level first."""

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__(
            fpn_nodes(min_level, max_level), in_channels, min_level, max_level, width, repeats,
            **node_kwargs,
        )


class PAFPN(GraphNeck):
    """Repeated FPN + PANet bottom-up path (paper fig. 2b): ``2 * num_levels`` nodes a cell."""

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__(
            pafpn_nodes(min_level, max_level), in_channels, min_level, max_level, width, repeats,
            **node_kwargs,
        )


class FullyConnectedFPN(GraphNeck):
    """The fully-connected FPN of the paper's ablation: every node fuses every level."""

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__(
            fully_connected_nodes(min_level, max_level), in_channels, min_level, max_level,
            width, repeats, **node_kwargs,
        )


class ExactFusionFPN(GraphNeck):
    """CSPNet's Exact Fusion Model: each level fuses the inputs of levels ``s - 1, s, s + 1``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__(
            efm_nodes(min_level, max_level), in_channels, min_level, max_level, width, repeats,
            **node_kwargs,
        )
