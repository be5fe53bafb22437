"""Mosaic, mixup and copy-paste in training: the feature cache's augmented views and the
on-the-fly loader draw them through the same dataset code; their options; the backbone's
learning-rate factor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from efficientdet.data import DetectionDataset, MixAugment, TrainTransform, load_dataset
from efficientdet.modeling.factory import create_model
from efficientdet.train import Trainer, load_config
from efficientdet.train.feature_cache import _VIEW_SEED, build_feature_cache
from efficientdet.train.parameters import backbone_stages, freeze_modules, parameter_groups

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
MIX = MixAugment(mosaic_prob=1.0, mixup_prob=0.5, copy_paste_prob=0.5)


class Pixels(nn.Module):
    """A "backbone" whose one feature map is its input: the cache then holds the views' pixels."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def test_cached_views_are_the_loaders_items_for_the_views_seeds(tiny_demo) -> None:
    data = load_dataset(tiny_demo.data_yaml, "train")
    cache = build_feature_cache(
        Pixels(), data, image_size=(64, 64), views=3, hflip_prob=0.5, scale_range=(0.8, 1.25), mix=MIX,
        seed=4, **PLAIN,
    )
    loader_items = DetectionDataset(
        data, TrainTransform(64, hflip_prob=0.5, scale_range=(0.8, 1.25), **PLAIN), mix=MIX
    )
    n = len(data)
    for view in (1, 2):
        for index in (0, 5, n - 1):
            image, target = loader_items[(index, _VIEW_SEED * view + 4)]
            row = view * n + index
            assert torch.allclose(cache.maps[0][row].float(), image, atol=2e-3)
            assert torch.equal(cache.targets[row]["boxes"], target["boxes"])
            assert torch.equal(cache.targets[row]["labels"], target["labels"])


def _config(tiny_demo, out: Path, *extra: str):
    return load_config(None, [
        "model.name=efficientdet_test", "model.pretrained_backbone=false", f"data.train={tiny_demo.data_yaml}",
        f"run.out_dir={out}", "run.batch_size=4", "run.progress=false", "run.eval_every=0",
        "run.save_every_steps=0", "data.num_workers=0", "run.max_steps=3", *extra,
    ])


MIX_OPTIONS = ("data.mosaic_prob=0.5", "data.mixup_prob=0.5", "data.copy_paste_prob=0.5")


@pytest.mark.parametrize("cached", [False, True])
def test_runs_train_with_every_mix_on(tiny_demo, tmp_path: Path, cached: bool) -> None:
    extra = ("model.freeze_backbone=-1", "data.cache_features=true", "data.cache_views=2") if cached else ()
    trainer = Trainer(_config(tiny_demo, tmp_path / "run", *MIX_OPTIONS, *extra))
    if cached:
        assert trainer.feature_cache is not None and trainer.feature_cache.views == 2
    result = trainer.fit()
    assert result.step == 3 and all(math.isfinite(loss) for loss in result.losses)
    if not cached:
        assert trainer._train_dataset is not None and trainer._train_dataset.mix == MixAugment(
            mosaic_prob=0.5, mixup_prob=0.5, copy_paste_prob=0.5
        )


def test_mix_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"data.mosaic_prob must be in \[0, 1\], got 2"):
        load_config(None, ["data.mosaic_prob=2"])
    with pytest.raises(ValueError, match=r"data.mixup_alpha must be positive"):
        load_config(None, ["data.mixup_alpha=0"])
    with pytest.raises(ValueError, match="need data.augment=true"):
        load_config(None, ["data.augment=false", "data.copy_paste_prob=0.3"])
    with pytest.raises(ValueError, match="data.hsv_h, data.hsv_s and data.hsv_v need data.augment=true"):
        load_config(None, ["data.augment=false", "data.hsv_v=0.4"])
    with pytest.raises(ValueError, match="optim.backbone_lr_factor must be positive"):
        load_config(None, ["optim.backbone_lr_factor=0"])
    config = load_config(None, [])  # off by default
    assert not config.data.mix_augment().active and config.optim.backbone_lr_factor == 1.0


def test_parameter_groups_give_the_backbone_its_factor() -> None:
    model = create_model("efficientdet_test", num_classes=3)
    stages = backbone_stages(model.backbone)
    freeze_modules([m for s in stages[:-1] for m in s])  # the last stage trains
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_backbone = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert in_backbone
    same = parameter_groups(model, 1e-4)
    assert [(g["weight_decay"], g["lr_factor"]) for g in same] == [(1e-4, 1.0), (0.0, 1.0)]
    groups = parameter_groups(model, 1e-4, backbone_lr_factor=0.1)
    assert [(g["weight_decay"], g["lr_factor"]) for g in groups] == [(1e-4, 1.0), (0.0, 1.0), (1e-4, 0.1), (0.0, 0.1)]
    slow = {id(p) for g in groups if g["lr_factor"] == 0.1 for p in g["params"]}
    assert slow == in_backbone
    assert {id(p) for g in groups for p in g["params"]} == trainable


def test_the_backbone_trains_at_its_factor_of_the_rate(tiny_demo, tmp_path: Path) -> None:
    trainer = Trainer(_config(
        tiny_demo, tmp_path / "run", "model.freeze_backbone=3", "optim.backbone_lr_factor=0.1",
        "optim.optimizer=adamw", "optim.lr=0.01", "optim.warmup_epochs=0", "optim.schedule=constant",
    ))
    trainer.fit()
    rates = sorted({(g["lr_factor"], g["lr"]) for g in trainer.optimizer.param_groups})
    assert rates == [(0.1, pytest.approx(0.001)), (1.0, pytest.approx(0.01))]
