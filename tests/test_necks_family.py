import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import efficientdet as ed
from efficientdet.config import feature_sizes
from efficientdet.modeling.necks import (
    NECKS,
    NodeSpec,
    bifpn_nodes,
    build_neck,
    cell_output_ids,
    efm_nodes,
    fpn_nodes,
    fully_connected_nodes,
    nasfpn_nodes,
    pafpn_nodes,
)
from efficientdet.modeling.necks.bfp import BalancedStep, NonLocal2d
from efficientdet.modeling.necks.graph import validate_nodes
from efficientdet.modeling.necks.mlfpn import TUM
from efficientdet.modeling.necks.nasfpn import GlobalAttentionMerge
from efficientdet.modeling.profile import count_parameters

ALL_NECKS = ["bifpn", "fpn", "pafpn", "nasfpn", "bfp", "mlfpn", "asff", "efm", "fcfpn"]

# P3-P7 inputs are ids 0..4 in every node list below.


def test_every_requested_neck_is_registered() -> None:
    assert sorted(NECKS) == sorted(ALL_NECKS)
    with pytest.raises(ValueError, match="'asff'"):
        ed.create_model("efficientdet_test", neck="unet")


def test_fpn_node_list_is_top_down() -> None:
    assert fpn_nodes(3, 7) == [
        NodeSpec(7, (4,)),  # 5: P7 = f(P7in)
        NodeSpec(6, (3, 5)),  # 6: P6 = f(P6in, up(P7))
        NodeSpec(5, (2, 6)),
        NodeSpec(4, (1, 7)),
        NodeSpec(3, (0, 8)),  # 9: P3 = f(P3in, up(P4))
    ]
    assert cell_output_ids(fpn_nodes(3, 7), 3, 7) == [9, 8, 7, 6, 5]


def test_pafpn_node_list_adds_a_bottom_up_path() -> None:
    nodes = pafpn_nodes(3, 7)
    assert nodes[:5] == fpn_nodes(3, 7)
    assert nodes[5:] == [
        NodeSpec(3, (9,)),  # 10: N3 = f(P3td)
        NodeSpec(4, (8, 10)),  # 11: N4 = f(P4td, down(N3))
        NodeSpec(5, (7, 11)),
        NodeSpec(6, (6, 12)),
        NodeSpec(7, (5, 13)),  # 14: N7 = f(P7td, down(N6))
    ]
    assert cell_output_ids(nodes, 3, 7) == [10, 11, 12, 13, 14]


def test_fully_connected_fpn_matches_figure_2d() -> None:
    # PANet's two columns; every output node also reads the input of every level.
    every_input = (0, 1, 2, 3, 4)
    assert fully_connected_nodes(3, 7) == [
        NodeSpec(7, (4,)),
        NodeSpec(6, (3, 5)),
        NodeSpec(5, (2, 6)),
        NodeSpec(4, (1, 7)),
        NodeSpec(3, (0, 8)),
        NodeSpec(3, (9, *every_input)),
        NodeSpec(4, (8, 10, *every_input)),
        NodeSpec(5, (7, 11, *every_input)),
        NodeSpec(6, (6, 12, *every_input)),
        NodeSpec(7, (5, 13, *every_input)),
    ]


def test_bifpn_is_panet_simplified_as_the_paper_describes() -> None:
    """Section 3.2: from PANet, remove the nodes with one input edge, then add an edge from the
    original input to the output node at the same level."""
    pan = pafpn_nodes(3, 7)
    kept: list[NodeSpec] = []
    remap: dict[int, int] = {i: i for i in range(5)}
    for i, node in enumerate(pan):
        if len(node.inputs) == 1:
            remap[5 + i] = remap[node.inputs[0]]
            continue
        remap[5 + i] = 5 + len(kept)
        kept.append(NodeSpec(node.level, tuple(remap[j] for j in node.inputs)))
    first_bottom_up = 4  # P4out is the first bottom-up node left
    derived = kept[:first_bottom_up] + [
        NodeSpec(n.level, (n.level - 3, *n.inputs)) if n.level - 3 not in n.inputs else n
        for n in kept[first_bottom_up:]
    ]
    as_sets = [(n.level, set(n.inputs)) for n in derived]
    assert as_sets == [(n.level, set(n.inputs)) for n in bifpn_nodes(3, 7)]


def test_efm_fuses_neighbouring_scales() -> None:
    assert efm_nodes(3, 7) == [
        NodeSpec(3, (0, 1)),
        NodeSpec(4, (0, 1, 2)),
        NodeSpec(5, (1, 2, 3)),
        NodeSpec(6, (2, 3, 4)),
        NodeSpec(7, (3, 4)),
    ]


def test_nasfpn_cell_is_the_seven_merging_cells() -> None:
    nodes, merges = nasfpn_nodes(3, 7)
    assert nodes == [
        NodeSpec(4, (1, 3)),  # 5
        NodeSpec(4, (1, 5)),  # 6
        NodeSpec(3, (0, 6)),  # 7: P3 out
        NodeSpec(4, (6, 7)),  # 8: P4 out
        NodeSpec(5, (7, 8, 2)),  # 9: P5 out, plus the unread P5 input
        NodeSpec(7, (6, 9, 4)),  # 10: P7 out, plus the unread P7 input
        NodeSpec(6, (9, 10)),  # 11: P6 out
    ]
    assert merges == ["attention", "sum", "sum", "sum", "attention", "attention", "attention"]
    assert cell_output_ids(nodes, 3, 7) == [7, 8, 9, 11, 10]
    with pytest.raises(ValueError, match="P3-P7"):
        nasfpn_nodes(3, 8)


@pytest.mark.parametrize("fn", [fpn_nodes, pafpn_nodes, fully_connected_nodes, efm_nodes])
def test_node_lists_are_valid_for_other_level_ranges(fn) -> None:
    for lo, hi in [(3, 7), (3, 8), (2, 6), (3, 4)]:
        nodes = fn(lo, hi)
        validate_nodes(nodes, lo, hi)
        assert sorted({n.level for n in nodes}) == list(range(lo, hi + 1))


def test_global_attention_merge() -> None:
    coarse = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])  # max 3
    fine = torch.full((1, 1, 2, 2), 2.0)
    extra = torch.ones(1, 1, 2, 2)
    merge = GlobalAttentionMerge(3, gate_index=1, channels=1)
    gate = 1 / (1 + torch.exp(torch.tensor(-3.0)))
    expected = coarse + 2.0 * gate + 1.0
    torch.testing.assert_close(merge([fine, coarse, extra]), expected)


def test_non_local_block_starts_as_identity() -> None:
    block = NonLocal2d(4)
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(block(x), x)


def test_balanced_step_adds_the_level_average() -> None:
    step = BalancedStep(3, 2, refine="none")
    feats = [torch.full((1, 2, s, s), v) for s, v in [(8, 1.0), (4, 2.0), (2, 6.0)]]
    out = step(feats)
    for x, o in zip(feats, out, strict=True):
        torch.testing.assert_close(o, x + 3.0)


def test_tum_output_sizes_halve_rounding_up() -> None:
    tum = TUM(6, 8, 5)
    outs = tum(torch.randn(2, 6, 13, 7))
    assert [tuple(o.shape) for o in outs] == [
        (2, 8, 13, 7), (2, 8, 7, 4), (2, 8, 4, 2), (2, 8, 2, 1), (2, 8, 1, 1)
    ]


def _features(image_size: tuple[int, int], channels: list[int], batch: int = 2) -> list[torch.Tensor]:
    sizes = feature_sizes(image_size, 7)[3:]
    return [torch.randn(batch, c, *s) for c, s in zip(channels, sizes, strict=True)]


@pytest.mark.parametrize("neck", ALL_NECKS)
@pytest.mark.parametrize("image_size", [(128, 128), (128, 256), (96, 160)])
def test_neck_shapes_and_inputs_untouched(neck: str, image_size: tuple[int, int]) -> None:
    config = ed.get_config("efficientdet_test", neck=neck, fpn_repeats=2)
    channels = [24, 40, 64, 16, 16]  # P3-P5 from a backbone, P6/P7 already at the width
    module = build_neck(config, channels).eval()
    feats = _features(image_size, channels)
    copies = [f.clone() for f in feats]
    with torch.no_grad():
        out = module(feats)
    assert [tuple(o.shape) for o in out] == [(2, 16, *f.shape[-2:]) for f in feats]
    assert all(torch.isfinite(o).all() for o in out)
    for f, c in zip(feats, copies, strict=True):
        assert torch.equal(f, c)


@pytest.mark.parametrize("neck", ALL_NECKS)
def test_every_neck_parameter_and_input_gets_a_gradient(neck: str) -> None:
    config = ed.get_config("efficientdet_test", neck=neck, fpn_repeats=2)
    channels = [24, 40, 64, 16, 16]
    module = build_neck(config, channels).train()
    with torch.no_grad():  # zero-initialised BN scales (non-local block) would hide wiring
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    feats = [f.requires_grad_() for f in _features((96, 160), channels)]
    out = module(feats)
    sum(o.pow(2).mean() for o in out).backward()
    bad = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad
    zero = [n for n, p in module.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero
    unused = [i for i, f in enumerate(feats) if f.grad is None or f.grad.abs().sum() == 0]
    assert not unused, f"inputs {unused} do not reach the outputs"


@pytest.mark.parametrize("neck", ALL_NECKS)
def test_detector_builds_with_each_neck(neck: str) -> None:
    model = ed.create_model("efficientdet_test", num_classes=3, neck=neck).eval()
    assert model.config.neck == neck
    with torch.no_grad():
        cls, box = model(torch.randn(1, 3, 96, 160))
    assert [tuple(c.shape) for c in cls] == [
        (1, 27, 12, 20), (1, 27, 6, 10), (1, 27, 3, 5), (1, 27, 2, 3), (1, 27, 1, 2)
    ]
    assert [b.shape[1] for b in box] == [36] * 5
    assert all(torch.isfinite(c).all() for c in cls)


def _b3_neck_cost(neck: str, repeats: int) -> tuple[int, int]:
    """Params and multiply-adds of a neck alone at the paper's ablation size (B3 backbone:
    P3-P5 with 48/136/384 channels, width 160, 896 px), counted on the meta device."""
    config = ed.get_config(
        "tf_efficientdet_d3", neck=neck, fpn_repeats=repeats, fusion="sum"
    )
    channels = [48, 136, 384, 160, 160]
    with torch.device("meta"):
        module = build_neck(config, channels).eval()
        feats = _features((896, 896), channels, batch=1)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(feats)
    return count_parameters(module), counter.get_total_flops() // 2


def test_relative_cost_close_to_the_papers_table_5() -> None:
    """Table 5 (docs/model-reference.md, section 6): params / FLOPs relative to repeated top-down FPN."""
    fpn = _b3_neck_cost("fpn", 12)
    pafpn = _b3_neck_cost("pafpn", 6)
    assert pafpn == fpn  # the paper: both 1.00x
    paper = {"nasfpn": (0.71, 0.72), "fcfpn": (1.24, 1.21), "bifpn": (0.88, 0.67)}
    for neck, (params_ratio, flops_ratio) in paper.items():
        params, macs = _b3_neck_cost(neck, 6)
        assert params / fpn[0] == pytest.approx(params_ratio, abs=0.05), neck
        assert macs / fpn[1] == pytest.approx(flops_ratio, abs=0.05), neck
