"""Inference optimisation: BN folding, unshared heads, channels-last; outputs and detections
equal the eager network's."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from efficientdet.detection.detector import Detector
from efficientdet.modeling.factory import create_model
from efficientdet.modeling.model import EfficientDet
from efficientdet.modeling.optimize import (
    InferenceModel,
    UnsharedHeadNet,
    find_conv_bn_pairs,
    fold_batchnorms,
    fold_conv_bn_,
    optimize_for_inference,
)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (fresh ones are identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> EfficientDet:
    torch.manual_seed(0)
    model = randomise_batchnorms(create_model("efficientdet_test"))
    with torch.no_grad():  # spread the class scores so detections do not hinge on near-ties
        nn.init.normal_(model.class_net.predict.pointwise.weight, std=2.0)
    return model


def outputs_close(a: tuple[list[Tensor], list[Tensor]], b: tuple[list[Tensor], list[Tensor]]) -> None:
    for x, y in zip([*a[0], *a[1]], [*b[0], *b[1]], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (8, False)])
def test_fold_conv_bn_matches_conv_then_bn(groups: int, bias: bool) -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias)
    bn = randomise_batchnorms(nn.BatchNorm2d(16, eps=1e-3))
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_conv_bn_(conv, bn)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert conv.bias is not None


def test_pairs_cover_every_bn_but_the_shared_head_convs(tiny: EfficientDet) -> None:
    pairs, unfolded = find_conv_bn_pairs(tiny)
    all_bns = {n for n, m in tiny.named_modules() if isinstance(m, nn.BatchNorm2d)}
    # The heads' per-level BNs follow a conv shared by all levels: not foldable as they are.
    head_bns = {n for n in all_bns if n.startswith(("class_net.norms", "box_net.norms"))}
    assert set(unfolded) == head_bns and len(head_bns) == 2 * 5
    assert {bn for _, bn in pairs} == all_bns - head_bns
    convs = [conv for conv, _ in pairs]
    assert len(set(convs)) == len(convs)
    assert "neck.cells.0.nodes.0.conv.pointwise" in convs  # separable conv -> BN
    assert any(c.startswith("backbone.") for c in convs)  # timm BatchNormAct2d


def test_unshared_head_equals_shared_head(tiny: EfficientDet) -> None:
    head = UnsharedHeadNet(tiny.class_net)
    features = [torch.randn(1, 16, s, s) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        for got, exp in zip(head(features), tiny.class_net(features), strict=True):
            torch.testing.assert_close(got, exp)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("unshare", [False, True])
def test_optimised_outputs_equal_eager(tiny: EfficientDet, channels_last: bool, unshare: bool) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    fast = optimize_for_inference(tiny, channels_last=channels_last, unshare_head_convs=unshare)
    remaining = [m for m in fast.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(remaining) == (0 if unshare else 10)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        outputs_close(fast(images), tiny(images))
    # The original is untouched and still trains like before.
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in tiny.modules()) == 36


def test_optimised_detections_equal_eager(tiny: EfficientDet) -> None:
    fast = optimize_for_inference(tiny)
    assert isinstance(fast, InferenceModel) and fast.config == tiny.config
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        expected = Detector(tiny).eval().detect(images)
        got = Detector(fast).eval().detect(images)
    for g, e in zip(got, expected, strict=True):
        assert len(e["scores"]) > 0
        assert torch.equal(g["labels"], e["labels"])
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g["scores"], e["scores"], rtol=0, atol=1e-5)


def test_state_dict_is_the_networks(tiny: EfficientDet) -> None:
    fast = optimize_for_inference(tiny, fold_bn=False)
    assert set(fast.state_dict()) == {f"net.{k}" for k in tiny.state_dict()}


class SharedConv(nn.Module):
    """One conv feeding two BNs (like the heads): must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return [self.bn_a(self.conv(x))], [self.bn_b(self.conv(x))]


class BnAfterAdd(nn.Module):
    """A BN whose input is a sum, not a conv output: must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        y = self.bn(self.conv(x) + x)
        return [y], [y]


def test_only_a_conv_feeding_one_bn_folds() -> None:
    for model in (SharedConv(), BnAfterAdd()):
        randomise_batchnorms(model)
        pairs, unfolded = find_conv_bn_pairs(model, (8, 8))
        assert pairs == [] and len(unfolded) >= 1
        report = fold_batchnorms(model, (8, 8))
        assert report.folded == []


class ConvOutputReused(nn.Module):
    """The conv output also feeds the residual sum: folding the BN would change that use, which
    the probe check catches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        y = self.conv(x)
        z = self.bn(y) + y
        return [z], [z]


def test_probe_check_catches_a_wrong_fold() -> None:
    model = randomise_batchnorms(ConvOutputReused())
    with pytest.raises(RuntimeError, match="differ"):
        optimize_for_inference(model, probe_size=(8, 8))
    # Without the check the (wrong) fold goes through: the check is what guards it.
    fast = optimize_for_inference(model, probe_size=(8, 8), check=False)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(fast(x)[0][0], model(x)[0][0], atol=1e-3)


@pytest.mark.slow
def test_compiled_outputs_equal_eager(tiny: EfficientDet) -> None:
    fast = optimize_for_inference(tiny, compile=True)
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        outputs_close(fast(images), tiny(images))
