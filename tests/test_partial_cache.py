"""The backbone run in parts, and training its last blocks on the cached output of the
frozen ones (``model.freeze_backbone=k`` with ``data.cache_features=true``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from efficientdet.modeling.backbone import (
    create_backbone,
    run_frozen_part,
    run_trainable_part,
    split_matches,
    tapped_blocks,
)
from efficientdet.train import Trainer, TrainingError, load_config, train
from efficientdet.train.feature_cache import cache_bytes, frozen_part_bytes
from efficientdet.train.parameters import backbone_stages


def _config(tiny_demo, out: Path, *extra: str):
    return load_config(None, [
        "model.name=efficientdet_test", "model.pretrained_backbone=false", f"data.train={tiny_demo.data_yaml}",
        f"run.out_dir={out}", "run.batch_size=4", "run.progress=false", "run.eval_every=0",
        "run.save_every_steps=0", "data.num_workers=0", *extra,
    ])


@torch.no_grad()
def test_the_two_parts_give_the_backbones_maps() -> None:
    backbone, _ = create_backbone("test_efficientnet")
    backbone.eval()
    assert tapped_blocks(backbone) == (2, 3, 4)
    images = torch.randn(2, 3, 64, 96)
    whole = backbone(images)
    for first in range(len(backbone.blocks)):
        taps, boundary = run_frozen_part(backbone, images, first)
        # the frozen blocks produce the levels of the taps before `first`
        assert len(taps) == sum(1 for t in (2, 3, 4) if t < first)
        maps = taps + run_trainable_part(backbone, boundary, first)
        assert len(maps) == len(whole)
        for a, b in zip(maps, whole, strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"first_trainable must be in \[0, 4\]"):
        run_frozen_part(backbone, images, 5)


@torch.no_grad()
def test_a_stem_with_its_own_activation_is_split_too() -> None:
    """MobileNetV3 applies ``act1`` after the stem's BN; the parts must too."""
    net = timm.create_model("mobilenetv3_small_050", features_only=True, out_indices=(1, 2, 3), pretrained=False)
    net.eval()
    assert tapped_blocks(net) is not None
    images = torch.randn(1, 3, 64, 64)
    for first in (1, 2, 3):
        taps, boundary = run_frozen_part(net, images, first)
        assert all(torch.allclose(a, b) for a, b in zip(taps + run_trainable_part(net, boundary, first), net(images), strict=True))
        assert split_matches(net, first)


def test_a_backbone_of_another_layout_is_not_split() -> None:
    resnet = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4), pretrained=False)
    assert tapped_blocks(resnet) is None
    with pytest.raises(ValueError, match="cannot be run in parts"):
        run_frozen_part(resnet, torch.zeros(1, 3, 32, 32), 1)


def test_the_cache_holds_the_frozen_levels_and_a_boundary_only_when_it_is_not_one() -> None:
    backbone, info = create_backbone("test_efficientnet")
    size = (128, 128)
    # blocks[2] (the first level, stride 8) is the input of blocks[3]: nothing more to store
    first_level = cache_bytes(info.channels[:1], info.strides[:1], size, 5)
    assert frozen_part_bytes(backbone, size, 3, 5) == first_level
    # blocks[1]'s output feeds blocks[2]: stored on its own, no level yet
    _, boundary = run_frozen_part(backbone.eval(), torch.zeros(1, 3, *size), 2)
    assert frozen_part_bytes(backbone, size, 2, 5) == boundary.numel() * 5 * 2


@pytest.mark.parametrize(("freeze", "nhwc"), [(4, False), (2, True)])
def test_the_last_blocks_train_on_cached_maps_as_on_images(tiny_demo, tmp_path: Path, freeze: int, nhwc: bool) -> None:
    """freeze 4: blocks[3:] train from the cached stride-8 level; freeze 2: blocks[1:] from a
    boundary stored apart (in channels-last memory, as the budget recipe trains). Same
    batches, same updates as the run that reads the images every step: only the float16
    cache and the folded BN of the frozen blocks differ."""
    extra = ("run.max_steps=6", "data.augment=false", "optim.optimizer=adamw", "optim.lr=0.005",
             f"model.freeze_backbone={freeze}", f"run.channels_last={str(nhwc).lower()}")
    plain = train(_config(tiny_demo, tmp_path / "plain", *extra))
    trainer = Trainer(_config(tiny_demo, tmp_path / "cached", *extra, "data.cache_features=true"))
    cache = trainer.feature_cache
    assert cache is not None and cache.first_trainable == freeze - 1
    assert (cache.boundary is None) == (freeze == 4)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    cached = trainer.fit()
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)
    assert cached.losses[-1] < cached.losses[0]
    # the frozen stages keep their weights and statistics, the others learn
    stages = backbone_stages(trainer.model.backbone)
    frozen = {id(p) for m in (m for s in stages[:freeze] for m in s) for p in m.state_dict(keep_vars=True).values()}
    after = trainer.model.backbone.state_dict(keep_vars=True)
    changed = {name for name, v in after.items() if not torch.equal(v.detach(), before[name])}
    assert changed and all(id(after[name]) not in frozen for name in changed)
    assert any(name.startswith(f"blocks.{freeze - 1}.") for name in changed)


def test_frozen_stages_with_drop_path_train_as_their_cache(tiny_demo, tmp_path: Path, monkeypatch) -> None:
    """Frozen stages run as at inference in a training step (no drop-path, fixed BN), so a
    backbone with drop-path trains the same on the fly as on its cached maps; the trainable
    blocks keep theirs."""
    from dataclasses import replace

    import efficientdet.train.loop as loop

    build = loop.config_for_training
    monkeypatch.setattr(loop, "config_for_training",
                        lambda *a, **k: replace(build(*a, **k), backbone_drop_path=0.3))
    extra = ("run.max_steps=4", "data.augment=false", "optim.optimizer=adamw", "optim.lr=0.005",
             "model.freeze_backbone=4")
    trainer = Trainer(_config(tiny_demo, tmp_path / "plain", *extra))
    drops = [m for m in trainer.model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert drops, "the test needs a backbone with drop-path"
    trainer._train_mode()
    frozen = {id(m) for s in backbone_stages(trainer.model.backbone)[:4] for top in s for m in top.modules()}
    assert {m.training for m in drops if id(m) in frozen} == {False}
    assert {m.training for m in drops if id(m) not in frozen} == {True}
    # the same batches and generator on images and on the cache: drop-path draws only in
    # the trainable blocks, the same draws in both runs
    plain = trainer.fit()
    cached = train(_config(tiny_demo, tmp_path / "cached", *extra, "data.cache_features=true"))
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)


@pytest.mark.parametrize("freeze", [4, 2])
def test_a_run_training_cached_last_blocks_resumes_on_the_same_trajectory(tiny_demo, tmp_path: Path, freeze: int) -> None:
    extra = ("run.max_steps=6", "data.cache_features=true", "data.cache_views=2", f"model.freeze_backbone={freeze}")
    whole = train(_config(tiny_demo, tmp_path / "a", *extra))
    first = train(_config(tiny_demo, tmp_path / "b", *extra), on_step=lambda step, row: step == 4)
    rest = Trainer.resume(tmp_path / "b").fit()
    assert first.losses + rest.losses == whole.losses


def test_a_backbone_that_cannot_be_split_is_refused_with_its_name(tiny_demo, tmp_path: Path, monkeypatch) -> None:
    import efficientdet.train.loop as loop

    monkeypatch.setattr(loop, "split_matches", lambda backbone, first: False)
    with pytest.raises(TrainingError, match="test_efficientnet cannot be run in parts"):
        Trainer(_config(tiny_demo, tmp_path / "a", "model.freeze_backbone=4", "data.cache_features=true"))
