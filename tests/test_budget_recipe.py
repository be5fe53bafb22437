"""The budgeted recipe: what it chooses from the data and the machine, that the user's options
win, and ``efficientdet train --data --minutes`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from efficientdet.cli.main import main
from efficientdet.data import load_dataset
from efficientdet.modeling.registry import get_config
from efficientdet.train.budget_recipe import (
    CACHE_SHARE,
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


def test_views_fit_the_cache_share_and_the_epochs(tiny_demo) -> None:
    recipe = plan_budget_recipe(tiny_demo.data_yaml, 2.0, speed=SPEED)
    views = recipe.value("data.cache_views")
    n = recipe.data.num_images
    assert views * n * SPEED.backbone_per_image <= CACHE_SHARE * 120 + 1e-9
    assert recipe.value("data.augment") is (views > 1)
    # A longer budget never caches fewer views; a tiny one leaves a note instead of failing.
    assert plan_budget_recipe(tiny_demo.data_yaml, 20.0, speed=SPEED).value("data.cache_views") >= views
    short = plan_budget_recipe(tiny_demo.data_yaml, 0.05, speed=SPEED)
    assert short.value("data.cache_views") == 1
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
    assert 0 < config.run.time_budget_minutes < 3.0
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


def test_minutes_needs_data_and_a_positive_budget(tiny_demo, capsys) -> None:
    assert main(["train", "--minutes", "5"]) == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        plan_budget_recipe(tiny_demo.data_yaml, 0, speed=SPEED)


def test_train_with_minutes_end_to_end(tiny_demo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main([
        "train", "--data", str(tiny_demo.data_yaml), "--minutes", "0.6",
        "--set", f"run.out_dir={out}", "--set", "run.progress=false", "--set", "model.image_size=128",
    ])
    text = capsys.readouterr().out
    assert code == 0
    assert "budget recipe: 24 training images" in text and "data.cache_views=" in text
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["AP"] <= 1.0
    assert (out / "best.safetensors").is_file() or (out / "last.safetensors").is_file()
