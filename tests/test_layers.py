"""Building blocks: TF-SAME max-pooling and the weighted fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from efficientdet.modeling.layers import MaxPoolDown, upsample_nearest
from efficientdet.modeling.necks.graph import Fusion


def padded_same_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """TensorFlow's SAME max-pool written out: pad with -inf (extra on the bottom/right)."""
    k, s = factor + 1, factor
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-math.inf)
    return F.max_pool2d(x, k, s)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_same_max_pool_equals_the_padded_version(factor: int, layout: torch.memory_format) -> None:
    pool = MaxPoolDown(factor, "same")
    g = torch.Generator().manual_seed(factor)
    for h in range(1, 26):
        for w in (1, 2, 5, 16, 17):
            x = torch.randn(2, 3, h, w, generator=g).contiguous(memory_format=layout)
            out = pool(x)
            assert out.shape[-2:] == (math.ceil(h / factor), math.ceil(w / factor))
            assert torch.equal(out, padded_same_pool(x, factor)), (h, w)


@pytest.mark.parametrize("method", ["fast", "softmax", "channel_fast"])
def test_fusion_gradients_and_a_wider_later_input(method: str) -> None:
    fusion = Fusion(3, method, channels=4)
    inputs = [torch.randn(2, 4, 5, 5, requires_grad=True) for _ in range(3)]
    out = fusion(inputs)
    weights = fusion.normalized_weights(torch.float32)
    assert weights is not None
    if weights.dim() == 2:
        weights = weights[:, None, :, None, None]
    expected = sum(w * x for w, x in zip(weights, inputs, strict=True))
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(x.grad is not None for x in inputs) and fusion.weight.grad is not None
    # A float64 input after a float32 one widens the result, as plain arithmetic would.
    mixed = [inputs[0].detach(), inputs[1].detach().double(), inputs[2].detach()]
    assert fusion(mixed).dtype == torch.float64


def test_upsample_nearest_is_pytorchs_nearest_at_every_size() -> None:
    x = torch.randn(2, 3, 7, 9)
    for height in range(1, 20):
        for width in (1, 2, 5, 13, 17, 18):
            src = x[:, :, : (height + 1) // 2, : (width + 1) // 2]  # the pyramid's case
            for inp in (src, x):  # and any other sizes
                expected = F.interpolate(inp, size=(height, width), mode="nearest")
                assert torch.equal(upsample_nearest(inp, (height, width)), expected)
