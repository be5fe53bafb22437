import pytest
import torch

from efficientdet.modeling.necks import GraphNeck, NodeSpec, bifpn_nodes, cell_output_ids
from efficientdet.modeling.necks.graph import Fusion, validate_nodes


def test_bifpn_node_list_p3_p7() -> None:
    nodes = bifpn_nodes(3, 7)
    # inputs P3..P7 are ids 0..4; docs/model-reference.md, section 2
    assert nodes == [
        NodeSpec(6, (3, 4)),  # 5: P6td = f(P6in, up(P7in))
        NodeSpec(5, (2, 5)),  # 6: P5td
        NodeSpec(4, (1, 6)),  # 7: P4td
        NodeSpec(3, (0, 7)),  # 8: P3out
        NodeSpec(4, (1, 7, 8)),  # 9: P4out = f(P4in, P4td, down(P3out))
        NodeSpec(5, (2, 6, 9)),  # 10: P5out
        NodeSpec(6, (3, 5, 10)),  # 11: P6out
        NodeSpec(7, (4, 11)),  # 12: P7out = f(P7in, down(P6out))
    ]
    assert cell_output_ids(nodes, 3, 7) == [8, 9, 10, 11, 12]


def test_bifpn_p3_p8_adds_a_level() -> None:
    nodes = bifpn_nodes(3, 8)
    assert len(nodes) == 10 and nodes[0] == NodeSpec(7, (4, 5)) and nodes[-1] == NodeSpec(8, (5, 14))


def test_validate_rejects_forward_references() -> None:
    with pytest.raises(ValueError, match="not computed before"):
        validate_nodes([NodeSpec(4, (1, 6))], 3, 7)


def test_fusion_methods() -> None:
    a, b = torch.full((1, 2, 2, 2), 2.0), torch.full((1, 2, 2, 2), 4.0)
    fast = Fusion(2, "fast", 2)
    torch.testing.assert_close(fast([a, b]), torch.full_like(a, 6.0 / (2 + 1e-4)))
    soft = Fusion(2, "softmax", 2)
    torch.testing.assert_close(soft([a, b]), torch.full_like(a, 3.0))
    assert Fusion(2, "sum", 2).weight is None
    torch.testing.assert_close(Fusion(2, "sum", 2)([a, b]), torch.full_like(a, 6.0))
    channel = Fusion(2, "channel_fast", 2)
    with torch.no_grad():
        channel.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out = channel([a, b])
    assert out[0, 0].mean().item() == pytest.approx(2.0, rel=1e-3)
    assert out[0, 1].mean().item() == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(ValueError, match="not one of"):
        Fusion(2, "mean", 2)


def test_fast_fusion_ignores_negative_weights() -> None:
    fusion = Fusion(2, "fast", 1)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([-1.0, 1.0]))
    x = [torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 3.0)]
    assert fusion(x).item() == pytest.approx(3.0 / (1 + 1e-4))


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (40, 56)])
def test_bifpn_shapes(size: tuple[int, int]) -> None:
    h, w = size
    channels = [8, 12, 16, 10, 10]
    feats = []
    for i, c in enumerate(channels):
        h_l, w_l = h, w
        for _ in range(i + 3):
            h_l, w_l = (h_l - 1) // 2 + 1, (w_l - 1) // 2 + 1
        feats.append(torch.randn(2, c, h_l, w_l))
    neck = GraphNeck(bifpn_nodes(3, 7), channels, 3, 7, width=10, repeats=2)
    out = neck(feats)
    assert [o.shape for o in out] == [(2, 10, *f.shape[-2:]) for f in feats]
    # the first cell projects P3-P5 (backbone width) for each use; P4/P5 twice.
    first = neck.cells[0]
    projected = sum(
        not isinstance(p, torch.nn.Identity) for node in first.nodes for p in node.projs
    )
    assert projected == 5
