import math

import numpy as np
import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection.anchors import Anchors, generate_anchors, level_anchors


def test_hand_computed_level() -> None:
    # One scale, ratios (1, 1) and (1.4, 0.7), anchor scale 1, level 3 (stride 8), 16x24 image.
    cfg = AnchorConfig(num_scales=1, aspect_ratios=((1.0, 1.0), (1.4, 0.7)), anchor_scale=1.0)
    boxes = level_anchors(3, (16, 24), cfg)
    # grid 2 x 3, 2 anchors per location, row-major locations
    assert boxes.shape == (12, 4)
    expected = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0], [-1.6, 1.2, 9.6, 6.8],  # centre (4, 4)
            [8.0, 0.0, 16.0, 8.0], [6.4, 1.2, 17.6, 6.8],  # centre (12, 4)
            [16.0, 0.0, 24.0, 8.0], [14.4, 1.2, 25.6, 6.8],  # centre (20, 4)
            [0.0, 8.0, 8.0, 16.0], [-1.6, 9.2, 9.6, 14.8],  # centre (4, 12)
        ]
    )
    torch.testing.assert_close(boxes[:8], expected)


def test_scale_outer_ratio_inner() -> None:
    cfg = AnchorConfig()  # 3 scales x 3 ratios, anchor scale 4
    boxes = level_anchors(3, (128, 128), cfg)[:9]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    for a in range(9):
        s, r = divmod(a, 3)
        base = 4 * 8 * 2 ** (s / 3)
        rw, rh = cfg.aspect_ratios[r]
        assert w[a].item() == pytest.approx(base * rw, rel=1e-6)
        assert h[a].item() == pytest.approx(base * rh, rel=1e-6)


def test_scalar_aspect_ratios_mean_sqrt_pairs() -> None:
    cfg = AnchorConfig(aspect_ratios=(1.0, 2.0, 0.5))
    assert cfg.aspect_ratios[1] == pytest.approx((math.sqrt(2), 1 / math.sqrt(2)))


def test_non_square_counts_and_cache() -> None:
    anchors = Anchors(3, 7, AnchorConfig())
    boxes = anchors((256, 384))
    per_level = anchors.num_anchors_per_level((256, 384))
    assert per_level == [32 * 48 * 9, 16 * 24 * 9, 8 * 12 * 9, 4 * 6 * 9, 2 * 3 * 9]
    assert boxes.shape == (sum(per_level), 4)
    assert anchors((256, 384)) is boxes


@pytest.mark.parametrize("size", [(512, 512), (320, 320), (256, 384)])
def test_matches_reference_port(size: tuple[int, int]) -> None:
    """effdet (the reference PyTorch port) builds the same anchors, as yxyx."""
    from effdet.anchors import Anchors as RefAnchors

    ref = RefAnchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], 3.0, size).boxes
    ours = generate_anchors(size, 3, 7, AnchorConfig(anchor_scale=3.0))
    np.testing.assert_allclose(ours[:, [1, 0, 3, 2]].numpy(), ref.numpy(), rtol=1e-5, atol=1e-3)
