"""The budgeted recipe: what it chooses from the data and the machine, that the user's options
win; the choices worked out by hand from a fixed machine speed. (``efficientdet train --data
--minutes`` end to end, within its budget: tests/test_distributed.py.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from efficientdet.cli.main import main
from efficientdet.data import load_dataset
from efficientdet.modeling.registry import get_config
from efficientdet.train.budget_recipe import (
    Speed,
    budget_config,
    mirror_asymmetry,
    plan_budget_recipe,
)

# A fixed machine, so that the plan does not depend on this one's load.
SPEED = Speed(backbone_per_image=0.04, step=0.6, full_per_image=0.07, batch_size=16, threads=2, device="cpu")


def _shapes_dataset(root: Path, *, mirrored: bool, count: int = 40, size: int = 160, side: int = 30,
                    seed: int = 0) -> Path:
    """COCO set of two classes, "L" and "F" glyphs (asymmetric), on noise, each box the glyph
    plus a random margin; drawn as they are, or mirrored at random when ``mirrored`` (then each
    class looks the same mirrored)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        noise = rng.integers(0, 140, (size, size), dtype=np.uint8)
        image = Image.fromarray(noise)
        for j in range(2):
            label = (i + j) % 2
            glyph = Image.new("L", (side, side), 0)
            g = ImageDraw.Draw(glyph)
            g.rectangle((0, 0, 6, side - 1), fill=255)  # the stem, on the left
            if label == 0:
                g.rectangle((0, side - 7, side - 1, side - 1), fill=255)
            else:
                g.rectangle((0, 0, side - 1, 6), fill=255)
                g.rectangle((0, side // 2 - 3, side - 8, side // 2 + 3), fill=255)
            if mirrored and rng.random() < 0.5:
                glyph = glyph.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x, y = 12 + j * 75 + int(rng.integers(0, 20)), 12 + int(rng.integers(0, 100))
            image.paste(glyph, (x, y), glyph)
            left, top = int(rng.integers(2, 7)), int(rng.integers(2, 7))
            w, h = side + left + int(rng.integers(2, 7)), side + top + int(rng.integers(2, 7))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 7 + label * 5,
                                "bbox": [x - left, y - top, w, h], "area": w * h, "iscrowd": 0})
        name = f"{i:03d}.png"
        image.convert("RGB").save(root / "train" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 7, "name": "L"}, {"id": 12, "name": "F"}]}
    (root / "train.json").write_text(json.dumps(doc))
    (root / "data.yaml").write_text(
        "format: coco\npath: .\ntrain: {annotations: train.json, images: train}\n"
        "val: {annotations: train.json, images: train}\n"
    )
    return root / "data.yaml"


def test_mirror_asymmetry_tells_glyphs_from_mirrored_glyphs(tmp_path: Path) -> None:
    fixed = load_dataset(_shapes_dataset(tmp_path / "fixed", mirrored=False), "train")
    either = load_dataset(_shapes_dataset(tmp_path / "either", mirrored=True), "train")
    assert min(mirror_asymmetry(fixed).values()) > 2.0
    assert max(mirror_asymmetry(either).values()) < 1.5


def test_flips_follow_the_classes_symmetry(tmp_path: Path) -> None:
    fixed = plan_budget_recipe(_shapes_dataset(tmp_path / "fixed", mirrored=False), 5, speed=SPEED)
    either = plan_budget_recipe(_shapes_dataset(tmp_path / "either", mirrored=True), 5, speed=SPEED)
    assert fixed.value("data.hflip_prob") == 0.0
    assert either.value("data.hflip_prob") == 0.5
    assert "look different mirrored" in fixed.describe()


# The tiny demo (24 training and 8 validation images) planned with SPEED, worked through by
# hand. Batch 8, so a step takes 0.6 * 8 / 16 = 0.3 s; one cached view of the 24 images
# 24 * 0.04 = 0.96 s; the final evaluation is estimated at 2 * 8 * 0.07 + 15 = 16.12 s, and
# 1.2 times that, 19.344 s, is held back. Training gets 60 * minutes - 19.344 - 0.96 * views
# seconds; a view is added while its cost stays within a fifth of the budget, the epochs that
# remain are at least the views, the cache fits data.cache_max_gb, and up to 32 views.
SLOW_STEPS = replace(SPEED, step=6.0)  # 3 s a step at batch 8
HAND_PLANS = {
    # 12 views: 0.2 * 60 / 0.96 = 12.5 (the epochs would allow 21); (60 - 19.344 - 11.52) / 0.3
    # = 97.1 -> 97 steps = 32.3 epochs; 10 warm-up steps (at least 10) = 3.333 epochs.
    "cache share": (SPEED, 1.0, {}, {
        "data.cache_views": 12, "run.epochs": 65, "optim.warmup_epochs": 3.333,
        "optim.ema_decay": 0.95, "run.eval_every": 0,
    }),
    # 4 views: with 3 s steps, (40.656 - 0.96 v) / 3 * 8 / 24 >= v holds up to v = 4.08;
    # (40.656 - 3.84) / 3 = 12.3 -> 12 steps = 4 epochs.
    "epochs": (SLOW_STEPS, 1.0, {}, {
        "data.cache_views": 4, "run.epochs": 8, "optim.warmup_epochs": 3.333,
        "optim.ema_decay": 0.95, "run.eval_every": 0,
    }),
    # 3 views: Lite0's maps at 320 px are 40 * 40^2 + 112 * 20^2 + 320 * 10^2 = 140,800
    # float16 values an image, 6,758,400 bytes a view of 24; 0.02 GiB holds 3.
    # (40.656 - 2.88) / 0.3 = 125.9 -> 125 steps = 41.7 epochs.
    "memory": (SPEED, 1.0, {"data": {"cache_max_gb": 0.02}}, {
        "data.cache_views": 3, "run.epochs": 84, "optim.warmup_epochs": 3.333,
        "optim.ema_decay": 0.95, "run.eval_every": 0,
    }),
    # 32 views (the most); (1800 - 19.344 - 30.72) / 0.3 = 5833.1 -> 5833 steps = 1944.3
    # epochs; 50 warm-up steps (at most 50) = 16.667 epochs; EMA over 583 steps; 30 minutes
    # evaluate mid-run, every ceil(1944.3 / 3) = 649 epochs.
    "long": (SPEED, 30.0, {}, {
        "data.cache_views": 32, "run.epochs": 3889, "optim.warmup_epochs": 16.667,
        "optim.ema_decay": 0.99828, "run.eval_every": 649,
    }),
}


@pytest.mark.parametrize("case", sorted(HAND_PLANS))
def test_plan_from_a_fixed_speed_by_hand(tiny_demo, case: str) -> None:
    speed, minutes, user, expected = HAND_PLANS[case]
    recipe = plan_budget_recipe(tiny_demo.data_yaml, minutes, user=user, speed=speed)
    assert {key: recipe.value(key) for key in expected} == expected
    # The digits are large enough at Lite0's own 320 px; the batch is 8 on a CPU.
    assert (recipe.value("model.image_size"), recipe.value("run.batch_size")) == (320, 8)
    assert recipe.value("data.augment") is True and recipe.value("optim.lr") == 0.015
    # The training time: the budget less the held-back evaluation and the plan's own seconds
    # (up to 15 s on a busy machine).
    most = round((60 * minutes - 19.344) / 60, 2)
    assert most - 0.25 <= recipe.value("run.time_budget_minutes") <= most
    assert recipe.notes == []
    first = recipe.describe().splitlines()[0]
    assert first.startswith("budget recipe: 24 training images") and f"{minutes:g} min on cpu (2 threads)" in first


def test_a_budget_too_short_gets_one_view_and_a_note(tiny_demo) -> None:
    # 3 s: nothing is left after the held-back evaluation.
    short = plan_budget_recipe(tiny_demo.data_yaml, 0.05, speed=SPEED)
    assert short.value("data.cache_views") == 1 and short.value("data.augment") is False
    assert short.value("run.time_budget_minutes") == 0.1  # the floor
    assert any("give more minutes" in note for note in short.notes)


def test_user_options_are_kept_and_the_plan_adapts(tiny_demo) -> None:
    config, recipe = budget_config(
        tiny_demo.data_yaml, 3.0, overrides=["optim.lr=0.002", "data.cache_views=3", "run.out_dir=x"],
        speed=SPEED,
    )
    assert config.optim.lr == 0.002 and config.data.cache_views == 3
    assert config.data.augment is True  # three views need augmentation
    assert config.data.train == str(tiny_demo.data_yaml) and config.run.out_dir == "x"
    assert config.model.freeze_backbone == -1 and config.data.cache_features is True
    assert config.run.budget_includes_setup is True
    assert 2.43 <= config.run.time_budget_minutes <= 2.68  # (180 - 19.344) / 60 less the plan's time
    text = recipe.describe()
    assert "optim.lr=0.002" in text and "(yours)" in text


def test_tiny_boxes_get_a_larger_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    images, annotations = [], []
    for i in range(6):
        Image.new("RGB", (320, 320), (90, 90, 90)).save(tmp_path / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 320, "height": 320})
        for _ in range(10):
            x, y, s = int(rng.integers(0, 300)), int(rng.integers(0, 300)), int(rng.integers(8, 13))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "dot"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    (tmp_path / "data.yaml").write_text("format: coco\npath: .\ntrain: {annotations: ann.json, images: img}\n")
    recipe = plan_budget_recipe(tmp_path / "data.yaml", 10.0, speed=SPEED)
    assert recipe.value("model.image_size") > 320
    own = get_config("tf_efficientdet_lite0").anchors.anchor_scale
    assert recipe.value("model.anchor_scale") < own  # fitted: smaller anchors for tiny boxes


def _dots(root: Path, sides: tuple[int, int], image: tuple[int, int] = (640, 480), count: int = 8) -> Path:
    """``count`` gray images, each with 12 square boxes of ``sides`` px (COCO)."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        Image.new("RGB", image, (90, 90, 90)).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": image[0], "height": image[1]})
        for _ in range(12):
            s = int(rng.integers(sides[0], sides[1] + 1))
            x, y = int(rng.integers(0, image[0] - s)), int(rng.integers(0, image[1] - s))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "dot"}]}
    (root / "ann.json").write_text(json.dumps(doc))
    (root / "data.yaml").write_text("format: coco\npath: .\ntrain: {annotations: ann.json, images: img}\n")
    return root / "data.yaml"


def test_boxes_too_small_for_the_anchors_at_448_get_640_from_ten_minutes(tmp_path: Path) -> None:
    """Inputs over twice Lite0's pixels (512, 640) wait for 20 minutes, unless the anchors at
    448 px match under three quarters of the boxes: then from 10 (the ``small`` family:
    AP50 0.458 at 448, 0.542 at 640 in 10 minutes)."""
    tiny = _dots(tmp_path / "tiny", (8, 12))  # 6-8 px at 448
    nine = plan_budget_recipe(tiny, 9.0, speed=SPEED)
    ten = plan_budget_recipe(tiny, 10.0, speed=SPEED)
    assert (nine.value("model.image_size"), ten.value("model.image_size")) == (448, 640)
    # boxes the anchors match at 448 keep it at 10 minutes
    fair = plan_budget_recipe(_dots(tmp_path / "fair", (18, 26)), 10.0, speed=SPEED)
    assert fair.value("model.image_size") == 448


def test_minutes_needs_data_and_a_positive_budget(tiny_demo, capsys) -> None:
    assert main(["train", "--minutes", "5"]) == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        plan_budget_recipe(tiny_demo.data_yaml, 0, speed=SPEED)
