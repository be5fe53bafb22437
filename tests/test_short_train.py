"""Short training for the studies: the configuration it builds from the demo's recipe, a tiny run
that reaches an evaluation, and the reused demo data."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from efficientdet.modeling.registry import get_config, list_models
from efficientdet.modeling.scaling import config_for_training
from efficientdet.studies.short_train import (
    demo_data,
    model_settings,
    short_train,
    short_train_settings,
)
from efficientdet.train.recipes import DEMO_RECIPE

TINY = "efficientdet_test"
LITE0 = "tf_efficientdet_lite0"


def test_registered_names_are_overridden_and_other_models_travel_as_a_configuration() -> None:
    config = get_config(LITE0, neck="fpn", fusion="fast", fpn_channels=16, fpn_repeats=2,
                        image_size=(128, 160))
    before = list_models()
    assert model_settings(config) == {
        "name": LITE0, "phi": None, "image_size": [128, 160], "neck": "fpn", "fusion": "fast",
        "fpn_channels": 16, "fpn_repeats": 2,
    }
    assert model_settings(replace(config, num_classes=10))["name"] == LITE0  # the data's count
    # A head depth the trainer cannot override: the whole configuration, nothing registered.
    deeper = replace(get_config(TINY), head_repeats=2)
    section = model_settings(deeper)
    assert section["name"] == TINY and section["neck"] is None
    assert section["config"]["head_repeats"] == 2
    assert config_for_training(TINY, None, 5, model_config=section["config"]) == replace(deeper, num_classes=5)
    assert list_models() == before


def test_settings_follow_the_demo_recipe() -> None:
    lite0 = short_train_settings(get_config(LITE0), 7, "runs/x", data="d.yaml")
    assert lite0["optim"]["optimizer"] == "adamw" and lite0["data"]["augment"] is False
    assert lite0["model"]["pretrained_backbone"] is True and lite0["model"]["freeze_backbone"] == -1
    assert lite0["data"]["cache_features"] is True and lite0["run"]["channels_last"] is True
    assert lite0["run"]["batch_size"] == 16  # the recipe's
    assert lite0["run"]["max_steps"] == 7 and "epochs" not in lite0["run"]
    assert (lite0["data"]["train"], lite0["data"]["val"]) == ("d.yaml", "d.yaml")
    assert (lite0["run"]["eval_every"], lite0["run"]["out_dir"]) == (0, "runs/x")

    # No weights on disk for this backbone: from scratch, and nothing frozen.
    tiny = short_train_settings(get_config(TINY), 2, "r", data="d.yaml", batch_size=3)
    assert tiny["model"]["pretrained_backbone"] is False and "freeze_backbone" not in tiny["model"]
    assert tiny["run"]["batch_size"] == 3

    # Keys it does not know pass through; overrides come last.
    recipe = [*DEMO_RECIPE, "data.new_option=3", "run.time_budget_minutes=3"]
    custom = short_train_settings(
        get_config(LITE0), 2, "r", data="d.yaml", recipe=recipe,
        overrides=["optim.lr=0.02", "model.freeze_backbone=0"],
    )
    assert custom["data"]["new_option"] == 3 and "time_budget_minutes" not in custom["run"]
    assert custom["optim"]["lr"] == 0.02 and custom["model"]["freeze_backbone"] == 0

    # The backbone feature cache needs a frozen (so pretrained) backbone.
    cached = [*DEMO_RECIPE, "model.freeze_backbone=-1", "data.cache_features=true"]
    lite0 = short_train_settings(get_config(LITE0), 2, "r", data="d.yaml", recipe=cached)
    assert lite0["data"]["cache_features"] is True and lite0["model"]["freeze_backbone"] == -1
    tiny = short_train_settings(get_config(TINY), 2, "r", data="d.yaml", recipe=cached)
    assert "cache_features" not in tiny["data"] and "freeze_backbone" not in tiny["model"]
    with pytest.raises(ValueError, match="steps"):
        short_train_settings(get_config(TINY), 0, "r", data="d.yaml")


def test_short_train_returns_validation_ap(tmp_path: Path, tiny_demo) -> None:
    config = get_config(TINY, neck="fpn", fpn_channels=8)
    result = short_train(
        config, 2, tmp_path / "run", data=tiny_demo.data_yaml, batch_size=2,
        overrides=["data.num_workers=0"],
    )
    assert math.isfinite(result.ap) and 0.0 <= result.ap <= 1.0
    assert result.metrics["AP"] == result.ap and result.steps == 2
    assert result.pretrained_backbone is False and result.run_dir == tmp_path / "run"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["name"] == TINY and saved["model"]["neck"] == "fpn"
    assert saved["model"]["fpn_channels"] == 8 and saved["optim"]["optimizer"] == "adamw"
    assert (tmp_path / "run" / "eval" / "metrics.json").is_file()


def test_demo_data_is_written_once(tmp_path: Path) -> None:
    yaml_path = demo_data(tmp_path / "demo", num_train=6, num_val=3, image_size=96)
    assert yaml_path == tmp_path / "demo" / "data.yaml" and yaml_path.is_file()
    images = sorted((tmp_path / "demo").rglob("*.jpg")) or sorted((tmp_path / "demo").rglob("*.png"))
    assert len(images) == 9
    stamp = yaml_path.stat().st_mtime_ns
    assert demo_data(tmp_path / "demo", num_train=6, num_val=3, image_size=96) == yaml_path
    assert yaml_path.stat().st_mtime_ns == stamp  # reused, not rewritten
