"""Training over cached backbone features (data.cache_features) against the plain loop."""

from pathlib import Path

import pytest
import torch

from efficientdet.train import Trainer, TrainingError, load_config, train
from efficientdet.train.feature_cache import cache_bytes


def _config(tiny_demo, out: Path, *extra: str):
    return load_config(
        None,
        [
            "model.name=efficientdet_test",
            "model.pretrained_backbone=false",
            "model.freeze_backbone=-1",
            f"data.train={tiny_demo.data_yaml}",
            f"run.out_dir={out}",
            "run.batch_size=4",
            "run.progress=false",
            "run.eval_every=0",
            "run.save_every_steps=0",
            "data.num_workers=0",
            *extra,
        ],
    )


def test_cached_features_train_like_the_frozen_backbone(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=8", "data.augment=false", "optim.optimizer=adamw", "optim.lr=0.005")
    plain = train(_config(tiny_demo, tmp_path / "plain", *extra))
    cached = train(_config(tiny_demo, tmp_path / "cached", *extra, "data.cache_features=true"))
    assert len(plain.losses) == len(cached.losses) == 8
    # Same batches, same updates: only the float16 cache and the folded BN differ.
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)
    assert cached.losses[-1] < cached.losses[0]


def test_views_hold_augmented_copies_and_epochs_cycle_through_them(tiny_demo, tmp_path: Path) -> None:
    cfg = _config(
        tiny_demo, tmp_path / "run", "data.cache_features=true", "data.cache_views=3",
        "data.scale_min=0.5", "data.scale_max=1.5", "run.max_steps=2",
    )
    trainer = Trainer(cfg)
    cache = trainer.feature_cache
    assert cache is not None and cache.views == 3 and cache.num_samples == len(trainer.train_data)
    n = cache.num_samples
    assert cache.maps[0].shape[0] == 3 * n and cache.maps[0].dtype == torch.float16
    # view 0 is the letterbox; the augmented views move the boxes
    moved = sum(
        not torch.equal(cache.targets[i]["boxes"], cache.targets[n + i]["boxes"]) for i in range(n)
    )
    assert moved > n // 2
    maps, targets = cache.batch([0, 1], epoch=4, device=torch.device("cpu"))  # epoch 4 -> view 1
    assert maps.maps[0].dtype == torch.float32 and maps.image_size == (128, 128)
    assert torch.equal(targets[0]["boxes"], cache.targets[n]["boxes"])
    assert torch.equal(maps.maps[-1][1].half(), cache.maps[-1][n + 1])


def test_cached_run_resumes_on_the_same_trajectory(tiny_demo, tmp_path: Path) -> None:
    extra = ("run.max_steps=8", "data.cache_features=true", "data.cache_views=2")
    whole = train(_config(tiny_demo, tmp_path / "a", *extra))
    first = train(_config(tiny_demo, tmp_path / "b", *extra), on_step=lambda step, row: step == 5)
    rest = Trainer.resume(tmp_path / "b").fit()
    assert first.losses + rest.losses == whole.losses


def test_cache_refuses_a_trainable_backbone_or_an_oversized_cache(tiny_demo, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="model.freeze_backbone=-1"):
        Trainer(_config(tiny_demo, tmp_path / "a", "data.cache_features=true", "model.freeze_backbone=2"))
    with pytest.raises(TrainingError, match=r"GiB .*data.cache_max_gb"):
        Trainer(_config(tiny_demo, tmp_path / "b", "data.cache_features=true", "data.cache_max_gb=0.00001"))
    with pytest.raises(ValueError, match="data.augment=true"):
        _config(tiny_demo, tmp_path / "c", "data.cache_views=2", "data.augment=false")


def test_cache_size_counts_every_level() -> None:
    # Lite0 at 320 px: 40x40x40 + 112x20x20 + 320x10x10 halves per image
    assert cache_bytes([40, 112, 320], [8, 16, 32], (320, 320), 10) == 10 * 2 * (64000 + 44800 + 32000)
