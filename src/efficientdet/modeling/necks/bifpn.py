"""BiFPN: the paper's weighted bi-directional feature pyramid, repeated ``D_bifpn`` times."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .graph import FusionCell, NodeSpec, bifpn_nodes


class GraphNeck(nn.Module):
    """A neck made of ``repeats`` cells of the same node list (BiFPN, FPN, PANet, ...).

    Takes one feature per level ``Tensor[B, C_l, H_l, W_l]`` (P3..P7 by default, the extra
    levels already made) and returns ``Tensor[B, width, H_l, W_l]`` for each level.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__()
        self.nodes_spec = list(nodes)
        self.cells = nn.ModuleList()
        channels = list(in_channels)
        for _ in range(repeats):
            cell = FusionCell(nodes, channels, min_level, max_level, width, **node_kwargs)
            self.cells.append(cell)
            channels = cell.out_channels
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        for cell in self.cells:
            features = cell(features)
        return features


class BiFPN(GraphNeck):
    """BiFPN with fast-normalised (default), softmax or sum fusion."""

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
            bifpn_nodes(min_level, max_level),
            in_channels,
            min_level,
            max_level,
            width,
            repeats,
            **node_kwargs,
        )
