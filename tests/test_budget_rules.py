"""The budget recipe's rules for mosaic / mixup / copy-paste and for training the last
backbone stages: the rules alone, and the plan with them switched on (their settings patched,
as the family benchmark will set them) or with the user's values; the machine's speed is
fixed, so the arithmetic is worked out by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from efficientdet.train import budget_rules as rules
from efficientdet.train.budget_recipe import Speed, budget_config, plan_budget_recipe

SPEED = Speed(backbone_per_image=0.04, step=0.6, full_per_image=0.07, batch_size=16, threads=2, device="cpu")
LITE0_STAGES = 8  # the stem and seven block groups


@pytest.fixture
def rules_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MOSAIC_PROB", 0.5)
    monkeypatch.setattr(rules, "MIXUP_PROB", 0.2)
    monkeypatch.setattr(rules, "COPY_PASTE_PROB", 0.3)


def test_mix_rules_are_off_until_measured() -> None:
    proposals = rules.mix_rules(median_share=0.1, boxes_per_image=3)
    assert {k: p.value for k, p in proposals.items()} == dict.fromkeys(rules.MIX_KEYS, 0.0)
    assert math.isinf(rules.UNFREEZE_EPOCHS)
    assert rules.unfreeze_rule(stages=8, frozen_epochs=1e6, unfrozen_epochs=None).value == -1


def test_mix_rules_leave_out_mosaic_for_large_objects_and_pasting_in_crowds(rules_on) -> None:
    small = rules.mix_rules(median_share=0.2, boxes_per_image=5)
    assert [p.value for p in small.values()] == [0.5, 0.2, 0.3]
    crowded_large = rules.mix_rules(median_share=0.4, boxes_per_image=20)
    assert [p.value for p in crowded_large.values()] == [0.0, 0.2, 0.0]
    assert "cut" in crowded_large["data.mosaic_prob"].reason
    assert "20 boxes an image" in crowded_large["data.copy_paste_prob"].reason


def test_unfreeze_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "UNFREEZE_EPOCHS", 100.0)
    monkeypatch.setattr(rules, "UNFREEZE_STAGES", 2)
    assert rules.unfreeze_rule(stages=8, frozen_epochs=99, unfrozen_epochs=50).value == -1
    assert rules.unfreeze_rule(stages=8, frozen_epochs=150, unfrozen_epochs=5).value == -1  # too slow
    keep = rules.unfreeze_rule(stages=8, frozen_epochs=150, unfrozen_epochs=50)
    assert keep.value == 6 and "last 2 backbone stage(s)" in keep.reason


def test_the_plan_takes_the_rules_proposals(tiny_demo, rules_on) -> None:
    recipe = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=SPEED)
    assert [recipe.value(k) for k in rules.MIX_KEYS] == [0.5, 0.2, 0.3]
    assert "mosaic: 4 images in one" in recipe.describe()


def test_mosaic_reads_make_augmented_views_dearer(tiny_demo) -> None:
    # Reading costs 0.01 s an image; a plain view of the 24 images 24 * (0.04 + 0.01) = 1.2 s.
    # Without mosaic an augmented view costs the same: views while 1.2 v <= 0.2 * 60 -> 10.
    # With mosaic on every item, 4 images are read: 24 * (0.04 + 0.04) = 1.92 s; views while
    # 1.2 + 1.92 (v - 1) <= 12 -> 6, 10.8 s. Training then gets 60 - 10.8 - 19.344 = 29.856 s:
    # 99 steps of 0.3 s, 33 epochs (run.epochs, the upper bound, twice that).
    speed = replace(SPEED, backbone_per_image=0.04, read_per_image=0.01)
    plain = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=speed)
    mosaic = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=speed, user={"data": {"mosaic_prob": 1.0}})
    assert plain.value("data.cache_views") == 10 and mosaic.value("data.cache_views") == 6
    assert mosaic.value("data.mosaic_prob") == 1.0 and mosaic.value("run.epochs") == 66


def test_the_plan_trains_the_last_stage_on_cached_maps_when_epochs_are_to_spare(tiny_demo, monkeypatch) -> None:
    # 30 minutes: the frozen plan fits 1944 epochs (test_budget_recipe's "long" case). With the
    # last stage training on the cached maps of the others, a step takes 1.2 * 8 / 16 = 0.6 s:
    # 32 views of 24 * 0.04 = 0.96 s, then (1800 - 30.72 - 19.344) / 0.6 = 2916 steps, 972 epochs.
    monkeypatch.setattr(rules, "UNFREEZE_EPOCHS", 500.0)
    monkeypatch.setattr(rules, "UNFREEZE_STAGES", 1)
    speed = replace(SPEED, unfrozen_step=1.2)
    config, recipe = budget_config(tiny_demo.data_yaml, 30.0, speed=speed)
    assert recipe.value("model.freeze_backbone") == LITE0_STAGES - 1
    assert recipe.value("data.cache_features") is True and recipe.value("data.cache_views") == 32
    assert recipe.value("optim.backbone_lr_factor") == rules.BACKBONE_LR_FACTOR
    assert recipe.value("run.epochs") == 2 * 972
    assert "about 972 epochs of 0.60 s steps fit" in recipe.describe()
    assert config.model.freeze_backbone == 7 and config.data.cache_features
    assert config.optim.backbone_lr_factor == 0.1
    # Steps so slow that fewer than MIN_UNFROZEN_EPOCHS fit: the backbone stays frozen.
    slow = plan_budget_recipe(tiny_demo.data_yaml, 30.0, speed=replace(SPEED, unfrozen_step=500.0))
    assert slow.value("model.freeze_backbone") == -1 and slow.value("data.cache_features") is True


def test_the_users_trainable_stages_train_on_cached_maps(tiny_demo) -> None:
    # Five stages frozen, three train: 2.4 * 8 / 16 = 1.2 s a step. Views while 0.96 v <= 36 s
    # and (180 - 0.96 v - 19.344) / 1.2 * 8 / 24 >= v: all 32; then (180 - 30.72 - 19.344) /
    # 1.2 = 108 steps, 36 epochs.
    speed = replace(SPEED, unfrozen_step=2.4)
    config, recipe = budget_config(
        tiny_demo.data_yaml, 3.0, speed=speed, overrides=["model.freeze_backbone=5", "optim.backbone_lr_factor=0.3"],
    )
    assert recipe.value("data.cache_features") is True and recipe.value("data.cache_views") == 32
    assert recipe.value("run.epochs") == 72
    assert config.model.freeze_backbone == 5 and config.optim.backbone_lr_factor == 0.3


def test_the_users_trainable_stages_without_the_cache_train_on_the_fly(tiny_demo) -> None:
    # The same three stages with data.cache_features=false: (180 - 19.344) / 1.2 = 133 steps
    # = 44.3 epochs, every image read and augmented each time.
    speed = replace(SPEED, unfrozen_step=2.4)
    config, recipe = budget_config(
        tiny_demo.data_yaml, 3.0, speed=speed,
        overrides=["model.freeze_backbone=5", "data.cache_features=false"],
    )
    assert recipe.value("data.cache_features") is False and recipe.value("run.epochs") == 89
    assert recipe.value("data.augment") is True
    assert "augmented on the fly" in recipe.describe()
    with pytest.raises(KeyError):
        recipe.value("data.cache_views")
    assert config.model.freeze_backbone == 5 and not config.data.cache_features


def test_the_users_mosaic_turns_augmentation_on_even_with_one_view(tiny_demo) -> None:
    short = plan_budget_recipe(tiny_demo.data_yaml, 0.05, speed=SPEED, user={"data": {"mosaic_prob": 0.5}})
    assert short.value("data.cache_views") == 1 and short.value("data.augment") is True
    assert any("data.mosaic_prob change nothing with one cached view" in n for n in short.notes)
    jitter = plan_budget_recipe(tiny_demo.data_yaml, 0.05, speed=SPEED, user={"data": {"hsv_v": 0.4}})
    assert jitter.value("data.cache_views") == 1 and jitter.value("data.augment") is True
    assert any("data.hsv_v change nothing with one cached view" in n for n in jitter.notes)


def test_colour_jitter_is_proposed_with_the_other_augmentation(tiny_demo, monkeypatch) -> None:
    monkeypatch.setattr(rules, "HSV_ON", False)
    off = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=SPEED)
    assert [off.value(k) for k in rules.HSV_KEYS] == [0.0, 0.0, 0.0]
    assert "no colour jitter (data.hsv_h=0.015" in off.describe()
    monkeypatch.setattr(rules, "HSV_ON", True)
    on = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=SPEED)
    assert [on.value(k) for k in rules.HSV_KEYS] == list(rules.HSV)
    assert "colour jitter: hue within 1.5% of the wheel" in on.describe()
    # the user's values are kept; with one cached view there is no augmentation to jitter
    mine = plan_budget_recipe(tiny_demo.data_yaml, 1.0, speed=SPEED, user={"data": {"hsv_v": 0.1}})
    assert mine.value("data.hsv_v") == 0.1 and mine.value("data.hsv_h") == rules.HSV[0]
    short = plan_budget_recipe(tiny_demo.data_yaml, 0.05, speed=SPEED)
    assert short.value("data.augment") is False
    with pytest.raises(KeyError):
        short.value("data.hsv_h")
