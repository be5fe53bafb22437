"""create_model: a registered name or a ModelConfig becomes a network; weights load into it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import efficientdet as ed
from efficientdet.config import AnchorConfig
from efficientdet.modeling.factory import create_model, resolve_config
from efficientdet.modeling.model import EfficientDet
from efficientdet.modeling.scaling import compound_config


def test_a_compound_config_builds_as_it_is() -> None:
    config = compound_config(1.5, base="efficientdet_test", num_classes=5)
    model = ed.create_model(config)  # used to fail: 'ModelConfig' object is not iterable
    assert isinstance(model, EfficientDet) and model.config is config
    # phi 1.5 on the 16-channel, 1-repeat, 128 px base: 16 * 1.35**1.5 = 25.1 -> 24 channels,
    # 1 + 2 (1.5 rounds up) = 3 BiFPN cells, 128 + 192 = 320 -> 384 px.
    assert (config.fpn_channels, config.fpn_repeats, config.image_size) == (24, 3, (384, 384))
    assert model.class_net.predict.pointwise.out_channels == 9 * 5


def test_a_config_takes_the_same_overrides_as_a_name() -> None:
    config = ed.get_config("efficientdet_test")
    model = create_model(config, num_classes=3, anchors={"anchor_scale": 3.0})
    assert model.config.num_classes == 3 and model.config.anchors == AnchorConfig(anchor_scale=3.0)
    assert model.class_net.predict.pointwise.out_channels == 9 * 3
    assert resolve_config(config) is config
    assert resolve_config("efficientdet_test", num_classes=3) == replace(config, num_classes=3)
    assert create_model("efficientdet_test").config.num_classes == 90  # COCO's by default


def test_what_is_neither_a_name_nor_a_config_is_refused_in_one_line() -> None:
    with pytest.raises(TypeError, match="a registered model name .* or a ModelConfig, got dict"):
        create_model({"name": "efficientdet_test"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no published COCO weights for 'efficientdet_test_phi1.5'"):
        create_model(compound_config(1.5, base="efficientdet_test"), pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        create_model("efficientdet_test", pretrained=True, checkpoint="w.safetensors")


def test_a_checkpoint_loads_into_a_config_built_network(tmp_path: Path) -> None:
    config = compound_config(0.5, base="efficientdet_test", num_classes=4)
    source = create_model(config)
    path = ed.save_checkpoint(source, tmp_path / "scaled.safetensors")
    loaded = create_model(config, checkpoint=path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
