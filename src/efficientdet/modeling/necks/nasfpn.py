"""NAS-FPN (Ghiasi, Lin, Le, CVPR 2019, arXiv 1904.07392): the searched cell, repeated.

The cell is the 7-merging-cell architecture the search found (the paper's fig. 7f, the
"NAS-FPN" of its tables) for the five levels P3-P7. Each merging cell takes two features,
resizes them to its output level, merges them with a *sum* or a *global-pooling attention*
and then applies act -> 3x3 conv -> BN. The last five merging cells are the cell's outputs,
one per level.

Where the paper leaves a detail open, this follows its best-known implementation (the
TensorFlow TPU detection code released with the paper):

* the block list: (level, merge, inputs) below, with inputs numbered as in :mod:`.graph`
  (0-4 are the cell's P3-P7 inputs, 5 onwards the merging cells in order);
* an output merging cell also adds every earlier feature of its own level that no merging
  cell has read yet (here the P5 and P7 inputs, added to the P5 and P7 outputs);
* the attention merge: the input coming from the coarser level is max-pooled over space,
  squashed by a sigmoid and gates the other input, then the two are added
  (``coarse + fine * sigmoid(max_hw(coarse))``; the paper's fig. 6 draws global pooling);
* resizing: 1x1 conv + BN when the channel count differs, max-pooling down, nearest up.

As in EfficientDet's Table 5, the conv after each merge is the fusion node's depthwise-
separable 3x3 (``separable``) at the BiFPN width, so the cell runs on the same
:class:`~efficientdet.modeling.necks.graph.FusionNode` as BiFPN; the ``fusion`` weighting does not
apply (NAS-FPN's merges are unweighted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...config import ModelConfig
from .graph import Fusion, FusionCell, NodeSpec, node_options

MERGE_SUM = "sum"
MERGE_ATTENTION = "attention"
MERGES = (MERGE_SUM, MERGE_ATTENTION)
NASFPN_NUM_LEVELS = 5  # the cell was searched for P3-P7


@dataclass(frozen=True)
class MergingCell:
    """One searched merging cell: output ``level`` offset from the lowest level (0 = P3),
    ``merge`` in :data:`MERGES`, the two input feature ids, and whether it is a cell output."""

    level_offset: int
    merge: str
    inputs: tuple[int, int]
    is_output: bool


NASFPN_CELL: tuple[MergingCell, ...] = (
    MergingCell(1, MERGE_ATTENTION, (1, 3), False),  # 5: P4 from P4, P6
    MergingCell(1, MERGE_SUM, (1, 5), False),  # 6: P4
    MergingCell(0, MERGE_SUM, (0, 6), True),  # 7: P3 out
    MergingCell(1, MERGE_SUM, (6, 7), True),  # 8: P4 out
    MergingCell(2, MERGE_ATTENTION, (7, 8), True),  # 9: P5 out
    MergingCell(4, MERGE_ATTENTION, (6, 9), True),  # 10: P7 out
    MergingCell(3, MERGE_ATTENTION, (9, 10), True),  # 11: P6 out
)


def nasfpn_nodes(min_level: int, max_level: int) -> tuple[list[NodeSpec], list[str]]:
    """The NAS-FPN cell as fusion nodes and their merges, for five levels ``min..min + 4``.

    A node's first two inputs are the merging cell's pair; any further inputs are the
    not-yet-read features of the node's level that an output merging cell adds. For P3-P7 this
    gives ``P5out = attention(P3out, P4out) + P5in`` and
    ``P7out = attention(node 6, P5out) + P7in``.
    """
    num_levels = max_level - min_level + 1
    if num_levels != NASFPN_NUM_LEVELS:
        raise ValueError(
            f"the NAS-FPN cell is defined for {NASFPN_NUM_LEVELS} levels (P3-P7), "
            f"got P{min_level}-P{max_level}"
        )
    levels = list(range(min_level, max_level + 1))
    reads = [0] * num_levels
    nodes: list[NodeSpec] = []
    merges: list[str] = []
    for cell in NASFPN_CELL:
        level = min_level + cell.level_offset
        inputs = list(cell.inputs)
        for i in inputs:
            reads[i] += 1
        if cell.is_output:
            for i, (lv, n) in enumerate(zip(levels, reads, strict=True)):
                if n == 0 and lv == level:
                    inputs.append(i)
                    reads[i] += 1
        nodes.append(NodeSpec(level, tuple(inputs)))
        merges.append(cell.merge)
        levels.append(level)
        reads.append(0)
    return nodes, merges


class GlobalAttentionMerge(Fusion):
    """NAS-FPN's global-pooling merge of resized inputs ``Tensor[B, C, H, W]``:
    ``coarse + fine * sigmoid(max over H, W of coarse)``, plus any further inputs summed.

    ``gate_index`` (0 or 1) says which of the first two inputs came from the coarser level.
    No parameters.
    """

    def __init__(self, num_inputs: int, gate_index: int, channels: int) -> None:
        super().__init__(num_inputs, "sum", channels)
        if num_inputs < 2 or gate_index not in (0, 1):
            raise ValueError(
                f"attention merge needs two inputs and gate_index 0 or 1, got {num_inputs}, {gate_index}"
            )
        self.gate_index = gate_index

    def forward(self, inputs: list[Tensor]) -> Tensor:
        coarse, fine = inputs[self.gate_index], inputs[1 - self.gate_index]
        gate = torch.sigmoid(torch.amax(coarse, dim=(2, 3), keepdim=True))
        out = coarse + fine * gate
        for x in inputs[2:]:
            out = out + x
        return out


class NASFPNCell(FusionCell):
    """One NAS-FPN cell over five levels: seven merging cells on the shared fusion node."""

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        **node_kwargs: object,
    ) -> None:
        nodes, merges = nasfpn_nodes(min_level, max_level)
        kwargs = {**node_kwargs, "fusion": MERGE_SUM}
        super().__init__(nodes, in_channels, min_level, max_level, width, **kwargs)
        levels = list(range(min_level, max_level + 1)) + [spec.level for spec in nodes]
        for node, spec, merge in zip(self.nodes, nodes, merges, strict=True):
            if merge == MERGE_ATTENTION:
                first, second = (levels[i] for i in spec.inputs[:2])
                node.fusion = GlobalAttentionMerge(
                    len(spec.inputs), 0 if first >= second else 1, width
                )
            elif merge != MERGE_SUM:
                raise ValueError(f"merge {merge!r} is not one of {', '.join(map(repr, MERGES))}")


class NASFPN(nn.Module):
    """``repeats`` stacked NAS-FPN cells at ``width`` for P3-P7.

    Takes one ``Tensor[B, C_l, H_l, W_l]`` per level (lowest first) and returns one
    ``Tensor[B, width, H_l, W_l]`` per level.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        repeats: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__()
        self.cells = nn.ModuleList()
        channels = list(in_channels)
        for _ in range(repeats):
            cell = NASFPNCell(channels, min_level, max_level, width, **node_kwargs)
            self.cells.append(cell)
            channels = cell.out_channels
        self.out_channels = channels

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: Sequence[int]) -> NASFPN:
        """``config.fpn_repeats`` NAS-FPN cells at ``config.fpn_channels``."""
        return cls(
            in_channels, config.min_level, config.max_level, config.fpn_channels,
            config.fpn_repeats, **node_options(config),
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        for cell in self.cells:
            features = cell(features)
        return features
