import pytest
import torch

import efficientdet as ed


def test_tiny_model_shapes_follow_feature_info() -> None:
    model = ed.create_model("efficientdet_test", num_classes=5)
    cfg = model.config
    assert model.feature_info.strides == (8, 16, 32)
    cls, box = model(torch.randn(2, 3, 128, 128))
    assert len(cls) == len(box) == cfg.num_levels
    for level, (c, b) in zip(cfg.levels, zip(cls, box, strict=True), strict=True):
        side = 128 // 2**level
        assert c.shape == (2, 9 * 5, side, side)
        assert b.shape == (2, 9 * 4, side, side)
        assert torch.isfinite(c).all() and torch.isfinite(b).all()


def test_non_square_input() -> None:
    model = ed.create_model("efficientdet_test").eval()
    cls, box = model(torch.randn(1, 3, 128, 384))
    assert [tuple(c.shape[-2:]) for c in cls] == [(16, 48), (8, 24), (4, 12), (2, 6), (1, 3)]
    # sides not multiples of 128 work as in the official code (ceil per level)
    cls, _ = model(torch.randn(1, 3, 96, 200))
    assert [tuple(c.shape[-2:]) for c in cls] == [(12, 25), (6, 13), (3, 7), (2, 4), (1, 2)]


def test_every_parameter_gets_a_gradient() -> None:
    model = ed.create_model("efficientdet_test", num_classes=3, fusion="fast").train()
    cls, box = model(torch.randn(2, 3, 128, 128))
    loss = sum(c.float().pow(2).mean() for c in cls) + sum(b.pow(2).mean() for b in box)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_class_prior_bias() -> None:
    model = ed.create_model("efficientdet_test")
    bias = model.class_net.predict.pointwise.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -4.59511985013459), rtol=0, atol=1e-6)
    assert model.box_net.predict.pointwise.bias.abs().max() == 0


@pytest.mark.parametrize("fusion", ["softmax", "sum", "channel_softmax", "channel_fast"])
def test_fusion_variants_build_and_run(fusion: str) -> None:
    model = ed.create_model("efficientdet_test", fusion=fusion).eval()
    cls, _ = model(torch.randn(1, 3, 128, 128))
    assert torch.isfinite(cls[0]).all()


def test_bad_input_shape() -> None:
    model = ed.create_model("efficientdet_test")
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.randn(3, 128, 128))


def test_bn_settings() -> None:
    model = ed.create_model("efficientdet_test")
    bn = model.class_net.norms[0][0]
    assert bn.eps == 1e-3 and bn.momentum == 0.01


def test_reset_class_head() -> None:
    model = ed.create_model("efficientdet_test", num_classes=90)
    model.reset_class_head(4)
    cls, _ = model.eval()(torch.randn(1, 3, 128, 128))
    assert cls[0].shape[1] == 9 * 4 and model.config.num_classes == 4
