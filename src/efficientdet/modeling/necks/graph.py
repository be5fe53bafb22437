"""Feature-network topology as data, and the fusion node that every graph-shaped neck shares.

A cell starts with one feature per pyramid level (ids ``0 .. num_levels - 1``, lowest level
first). Each :class:`NodeSpec` fuses some earlier features into a new one at ``level``; the new
feature gets the next id. The cell's output for a level is the last feature produced at that
level (or its input when no node writes it). BiFPN, FPN, PANet and the fully-connected FPN are
only different node lists around the same :class:`FusionNode`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...config import FUSION_METHODS, ModelConfig
from ..layers import (
    ConvBn,
    MaxPoolDown,
    SeparableConv,
    make_activation,
    upsample_nearest,
)

FAST_FUSION_EPS = 1e-4


@dataclass(frozen=True)
class NodeSpec:
    """One fusion node: its pyramid ``level`` and the ids of the features it fuses."""

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(min_level: int, max_level: int) -> list[NodeSpec]:
    """The BiFPN cell (paper fig. 2d/3): a top-down pass, then a bottom-up pass whose nodes
    also take the level's original input (the extra same-level edge).

    For P3-P7 the node ids are: P6td=5, P5td=6, P4td=7, P3out=8, P4out=9, P5out=10,
    P6out=11, P7out=12.
    """
    num_levels = max_level - min_level + 1
    latest = {lv: [lv - min_level] for lv in range(min_level, max_level + 1)}
    nodes: list[NodeSpec] = []

    def add(level: int, inputs: list[int]) -> None:
        nodes.append(NodeSpec(level, tuple(inputs)))
        latest[level].append(num_levels + len(nodes) - 1)

    for lv in range(max_level - 1, min_level - 1, -1):  # top-down
        add(lv, [latest[lv][-1], latest[lv + 1][-1]])
    for lv in range(min_level + 1, max_level + 1):  # bottom-up, with the same-level skip
        add(lv, [*latest[lv], latest[lv - 1][-1]])
    return nodes


class _NodeList:
    """Builds a node list while tracking the features produced at each level.

    ``history[level]`` lists the ids of every feature at ``level`` in the order they were
    made: the cell input first, then each node written at that level.
    """

    def __init__(self, min_level: int, max_level: int) -> None:
        if min_level > max_level:
            raise ValueError(f"min_level {min_level} is above max_level {max_level}")
        self.min_level = min_level
        self.max_level = max_level
        self.num_levels = max_level - min_level + 1
        self.history = {lv: [lv - min_level] for lv in range(min_level, max_level + 1)}
        self.nodes: list[NodeSpec] = []

    def input(self, level: int) -> int:
        """Id of the cell input at ``level``."""
        return level - self.min_level

    def latest(self, level: int) -> int:
        """Id of the newest feature at ``level``."""
        return self.history[level][-1]

    def add(self, level: int, inputs: Sequence[int]) -> int:
        """Append a node at ``level`` fusing ``inputs``; returns the new feature's id."""
        self.nodes.append(NodeSpec(level, tuple(inputs)))
        new_id = self.num_levels + len(self.nodes) - 1
        self.history[level].append(new_id)
        return new_id


def fpn_nodes(min_level: int, max_level: int) -> list[NodeSpec]:
    """Top-down FPN (paper fig. 2a, Lin et al. 2017) as one node per level.

    The top level gets a node of its own input alone (FPN's output conv on the coarsest
    lateral); every other level fuses its input with the node above it, top to bottom:
    ``P7out = f(P7in)``, ``P6out = f(P6in, up(P7out))``, ..., ``P3out = f(P3in, up(P4out))``.
    For P3-P7 the ids are P7=5, P6=6, P5=7, P4=8, P3=9.
    """
    graph = _NodeList(min_level, max_level)
    _add_top_down(graph)
    return graph.nodes


def _add_top_down(graph: _NodeList) -> None:
    graph.add(graph.max_level, [graph.input(graph.max_level)])
    for lv in range(graph.max_level - 1, graph.min_level - 1, -1):
        graph.add(lv, [graph.input(lv), graph.latest(lv + 1)])


def pafpn_nodes(min_level: int, max_level: int) -> list[NodeSpec]:
    """FPN + PANet bottom-up path augmentation (paper fig. 2b, Liu et al. 2018).

    The top-down pass of :func:`fpn_nodes`, then a bottom-up pass: the lowest level's output
    is a node of its top-down feature alone, and every level above fuses its top-down feature
    with the (max-pooled) output below it: ``N3 = f(P3td)``, ``N4 = f(P4td, down(N3))``, ...
    Ten nodes for P3-P7, as in the best-known port's ``pan`` configuration, which makes one
    PANet cell cost exactly two top-down FPN cells (the paper's Table 5 gives both 1.00x).
    """
    graph = _NodeList(min_level, max_level)
    _add_top_down(graph)
    graph.add(min_level, [graph.latest(min_level)])
    for lv in range(min_level + 1, max_level + 1):
        graph.add(lv, [graph.latest(lv), graph.latest(lv - 1)])
    return graph.nodes


def fully_connected_nodes(min_level: int, max_level: int) -> list[NodeSpec]:
    """The fully-connected FPN of the paper's ablation (fig. 2d of arXiv 1911.09070 v1-v3,
    Table 5): PANet "with expensive connections from all input features to output features".

    The nodes of :func:`pafpn_nodes`, where every bottom-up (output) node also fuses the cell
    input of every level: ``N_l = f(P_l_td, down(N_{l-1}), P3in, ..., P7in)`` (each input resized
    to level ``l``). With EfficientDet's projections this costs 1.26x params / 1.19x FLOPs of
    the repeated FPN at the B3 ablation size, against the paper's 1.24x / 1.21x.
    """
    nodes = pafpn_nodes(min_level, max_level)
    num_levels = max_level - min_level + 1
    all_inputs = tuple(range(num_levels))
    return nodes[:num_levels] + [
        NodeSpec(node.level, node.inputs + all_inputs) for node in nodes[num_levels:]
    ]


def efm_nodes(min_level: int, max_level: int) -> list[NodeSpec]:
    """Exact Fusion Model (CSPNet, Wang et al. 2019) as one node per level.

    Each level's output fuses the cell inputs of the neighbouring scales ``s - 1, s, s + 1``
    (two at the ends), lowest first: ``P3out = f(P3in, up(P4in))``,
    ``P4out = f(down(P3in), P4in, up(P5in))``, ..., ``P7out = f(down(P6in), P7in)``.
    CSPNet concatenates the three and compresses them with Maxout; here the fusion node's
    weighted fusion (``fusion``) plays that part.
    """
    graph = _NodeList(min_level, max_level)
    for lv in range(min_level, max_level + 1):
        neighbours = [other for other in (lv - 1, lv, lv + 1) if min_level <= other <= max_level]
        graph.add(lv, [graph.input(other) for other in neighbours])
    return graph.nodes


def cell_output_ids(nodes: Sequence[NodeSpec], min_level: int, max_level: int) -> list[int]:
    """Id of the last feature produced at each level, lowest level first."""
    num_levels = max_level - min_level + 1
    out = list(range(num_levels))
    for i, node in enumerate(nodes):
        out[node.level - min_level] = num_levels + i
    return out


def validate_nodes(nodes: Sequence[NodeSpec], min_level: int, max_level: int) -> None:
    """Raise ValueError when a node reads a feature that does not exist yet or a bad level."""
    num_levels = max_level - min_level + 1
    for i, node in enumerate(nodes):
        if not min_level <= node.level <= max_level:
            raise ValueError(f"node {i} has level {node.level} outside {min_level}..{max_level}")
        if not node.inputs:
            raise ValueError(f"node {i} has no inputs")
        for j in node.inputs:
            if not 0 <= j < num_levels + i:
                raise ValueError(f"node {i} reads feature {j}, which is not computed before it")


class Fusion(nn.Module):
    """Weighted fusion of same-shaped inputs (docs/model-reference.md, section 2).

    ``fast``: ``sum_i relu(w_i) I_i / (eps + sum_j relu(w_j))``; ``softmax``: softmax weights;
    ``sum``: plain sum, no parameters. ``channel_*`` variants learn one weight per input channel.
    Weights start at 1.
    """

    def __init__(self, num_inputs: int, method: str, channels: int) -> None:
        super().__init__()
        if method not in FUSION_METHODS:
            raise ValueError(
                f"fusion method {method!r} is not one of {', '.join(map(repr, FUSION_METHODS))}"
            )
        self.method = method
        if method == "sum":
            self.weight = None
        elif method.startswith("channel_"):
            self.weight = nn.Parameter(torch.ones(num_inputs, channels))
        else:
            self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self, dtype: torch.dtype) -> Tensor | None:
        """Per-input weights after normalisation, ``Tensor[n]`` or ``Tensor[n, C]``."""
        if self.weight is None:
            return None
        w = self.weight.to(dtype)
        if self.method.endswith("softmax"):
            return torch.softmax(w, dim=0)
        w = torch.relu(w)
        return w / (w.sum(dim=0, keepdim=True) + FAST_FUSION_EPS)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        weights = self.normalized_weights(inputs[0].dtype)
        if weights is None:
            if len(inputs) == 1:
                # A new tensor: the node's in-place activation must not overwrite its input.
                return inputs[0].clone()
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        if weights.dim() == 2:
            weights = weights[:, None, :, None, None]  # [n, 1, C, 1, 1] against [B, C, H, W]
        out = inputs[0] * weights[0]
        for i in range(1, len(inputs)):
            if inputs[i].dtype == out.dtype:
                out.addcmul_(inputs[i], weights[i])  # in place on a fresh tensor: one pass
            else:  # a wider input widens the sum, as out-of-place arithmetic does
                out = out + inputs[i] * weights[i]
        return out


class FusionNode(nn.Module):
    """Resize each input to the node's level, fuse, then activation -> separable conv -> BN.

    An input with ``in_channels != width`` first gets its own 1x1 conv + BN projection (only
    in a neck's first cell, where the backbone's features come in).
    """

    def __init__(
        self,
        spec: NodeSpec,
        input_levels: Sequence[int],
        input_channels: Sequence[int],
        width: int,
        *,
        fusion: str = "fast",
        act: str = "swish",
        padding: str = "same",
        redundant_bias: bool = True,
        separable: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.level = spec.level
        self.input_ids = spec.inputs
        self.projs = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.input_shifts: list[int] = []  # input level - node level
        for level, channels in zip(input_levels, input_channels, strict=True):
            self.projs.append(
                ConvBn(channels, width, 1, bias=redundant_bias, bn_eps=bn_eps, bn_momentum=bn_momentum)
                if channels != width
                else nn.Identity()
            )
            shift = level - spec.level
            self.input_shifts.append(shift)
            self.downs.append(MaxPoolDown(2**-shift, padding) if shift < 0 else nn.Identity())
        self.fusion = Fusion(len(spec.inputs), fusion, width)
        self.act = make_activation(act)
        conv_cls = SeparableConv if separable else ConvBn
        self.conv = conv_cls(
            width, width, 3, bias=redundant_bias, bn_eps=bn_eps, bn_momentum=bn_momentum
        )

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Fuse ``features[i] for i in input_ids`` into one ``Tensor[B, W, *size]``."""
        resized = []
        for i, proj, down, shift in zip(
            self.input_ids, self.projs, self.downs, self.input_shifts, strict=True
        ):
            x = proj(features[i])
            if shift < 0:
                x = down(x)
            elif shift > 0:
                x = upsample_nearest(x, size)
            resized.append(x)
        return self.conv(self.act(self.fusion(resized)))


class FusionCell(nn.Module):
    """One repeat of a graph-shaped neck: runs its nodes in order, returns one feature per level."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        in_channels: Sequence[int],
        min_level: int,
        max_level: int,
        width: int,
        **node_kwargs: object,
    ) -> None:
        super().__init__()
        validate_nodes(nodes, min_level, max_level)
        num_levels = max_level - min_level + 1
        if len(in_channels) != num_levels:
            raise ValueError(f"expected {num_levels} input channel counts, got {len(in_channels)}")
        self.min_level = min_level
        levels = list(range(min_level, max_level + 1))
        channels = list(in_channels)
        self.nodes = nn.ModuleList()
        self.node_levels = [spec.level for spec in nodes]
        for spec in nodes:
            self.nodes.append(
                FusionNode(
                    spec,
                    [levels[i] for i in spec.inputs],
                    [channels[i] for i in spec.inputs],
                    width,
                    **node_kwargs,  # type: ignore[arg-type]
                )
            )
            levels.append(spec.level)
            channels.append(width)
        self.output_ids = cell_output_ids(nodes, min_level, max_level)
        self.out_channels = [channels[i] for i in self.output_ids]

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        sizes = [tuple(x.shape[-2:]) for x in inputs]
        features = list(inputs)
        for node, level in zip(self.nodes, self.node_levels, strict=True):
            features.append(node(features, sizes[level - self.min_level]))
        return [features[i] for i in self.output_ids]


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

    @classmethod
    def from_config(
        cls, config: ModelConfig, in_channels: Sequence[int], topology: str = "bifpn"
    ) -> GraphNeck:
        """The neck of ``config`` (width, repeats, levels, fusion options) with the node list
        of ``topology``, one of :data:`TOPOLOGIES`."""
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology {topology!r} is not one of {', '.join(map(repr, TOPOLOGIES))}")
        return cls(
            TOPOLOGIES[topology](config.min_level, config.max_level), in_channels,
            config.min_level, config.max_level, config.fpn_channels, config.fpn_repeats,
            **node_options(config),
        )


def node_options(config: ModelConfig) -> dict[str, object]:
    """Fusion-node options of ``config``, shared by all graph-shaped necks."""
    return dict(
        fusion=config.fusion,
        act=config.act,
        padding=config.padding,
        redundant_bias=config.redundant_bias,
        separable=config.separable,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
    )


# The graph-shaped necks differ only in their node list: BiFPN (the paper's), repeated
# top-down FPN (fig. 2a), FPN + PANet (fig. 2b), the fully-connected FPN of the ablation, and
# CSPNet's Exact Fusion Model (each level fuses levels s - 1, s, s + 1).
TOPOLOGIES: dict[str, Callable[[int, int], list[NodeSpec]]] = {
    "bifpn": bifpn_nodes,
    "fpn": fpn_nodes,
    "pafpn": pafpn_nodes,
    "fcfpn": fully_connected_nodes,
    "efm": efm_nodes,
}
