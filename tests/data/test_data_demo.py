"""The demo data generator: determinism, disjoint digits, tight boxes, a loadable dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.data.check import check_dataset
from efficientdet.data.demo import (
    DIGIT_CLASS_NAMES,
    prepare_demo_data,
    render_scene,
    split_digit_indices,
    write_demo_dataset,
)
from efficientdet.data.load import load_dataset

TINY = {"num_train": 5, "num_val": 3, "image_size": 64, "min_object_size": 8.0}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "a"
    write_demo_dataset(root, seed=3, **TINY)
    return root


def test_same_seed_same_bytes(demo_root, tmp_path) -> None:
    files = write_demo_dataset(tmp_path / "b", seed=3, **TINY)
    assert files.data_yaml == tmp_path / "b" / "data.yaml"
    first, second = _files(demo_root), _files(tmp_path / "b")
    assert sorted(first) == [
        "annotations_train.json",
        "annotations_val.json",
        "data.yaml",
        *[f"train/{i:06d}.png" for i in range(1, 6)],
        *[f"val/{i:06d}.png" for i in range(1, 4)],
    ]
    assert first == second
    other = _files(write_demo_dataset(tmp_path / "c", seed=4, **TINY).root)
    assert other["train/000001.png"] != first["train/000001.png"]


def test_train_and_val_use_disjoint_digits(demo_root) -> None:
    targets = np.repeat(np.arange(10), 20)
    train, val = split_digit_indices(targets, 0.25, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 200
    assert np.bincount(targets[val]).tolist() == [5] * 10  # stratified
    used = {}
    for split in ("train", "val"):
        doc = json.loads((demo_root / f"annotations_{split}.json").read_text())
        used[split] = {a["digit_index"] for a in doc["annotations"]}
    assert used["train"] and used["val"]
    assert not used["train"] & used["val"]


def test_dataset_loads_and_checks_clean(demo_root) -> None:
    data = load_dataset(demo_root / "data.yaml", "train")
    assert data.class_names == list(DIGIT_CLASS_NAMES)
    assert data.label_to_category_id == list(range(10))
    val = load_dataset(demo_root, "val")
    assert len(val) == 3 and max(val[0].size) == 64
    report = check_dataset(data, input_size=64)
    assert not report.fatal
    assert report.issues.count("box_clipped") == report.issues.count("box_degenerate") == 0
    assert report.issues.count("size_mismatch") == report.issues.count("unreadable_image") == 0


def test_boxes_are_tight_around_the_ink() -> None:
    """On a flat background every changed pixel is ink; the box bounds the ink (alpha >= 0.5)."""
    digits = np.zeros((1, 8, 8))
    digits[0, 1:7, 3:5] = 16  # a bar, like a "1"
    flat = [Image.new("RGB", (200, 150), (128, 128, 128))]
    for seed in range(6):
        image, objects = render_scene(
            np.random.default_rng(seed),
            digits,
            np.array([0]),
            flat,
            image_size=96,
            max_objects=1,
            min_object_size=20.0,
            median_object_size=40.0,
            max_object_size=60.0,
        )
        background = image[0, 0].astype(int)
        changed = np.abs(image.astype(int) - background).max(axis=2) > 0
        if not objects:
            assert not changed.any()
            continue
        (x0, y0, x1, y1), index = objects[0]
        assert index == 0
        ys, xs = np.nonzero(changed)
        # Soft edges extend the changed area by at most ~2 px around the tight box.
        assert xs.min() <= x0 and ys.min() <= y0 and xs.max() + 1 >= x1 and ys.max() + 1 >= y1
        assert x0 - xs.min() <= 2 and y0 - ys.min() <= 2
        assert xs.max() + 1 - x1 <= 2 and ys.max() + 1 - y1 <= 2
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_bad_arguments_raise(tmp_path) -> None:
    with pytest.raises(ValueError, match="object sizes"):
        write_demo_dataset(tmp_path, num_train=1, num_val=1, image_size=64, min_object_size=30)


def test_prepare_demo_data_reuses_the_same_data_and_rewrites_other(tmp_path) -> None:
    """``make demo`` run twice writes the data once; other arguments replace the folder."""
    args = {"seed": 3, **TINY}
    files = prepare_demo_data(tmp_path / "d", args)
    assert json.loads((tmp_path / "d" / "demo-args.json").read_text()) == args
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert len(written) == 5 + 3 + 4  # images, two annotation files, data.yaml, the stamp
    again = prepare_demo_data(tmp_path / "d", args)
    assert again.data_yaml == files.data_yaml
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing rewritten
    (tmp_path / "d" / "stray.txt").write_text("left by the user")
    other = prepare_demo_data(tmp_path / "d", {**args, "num_train": 2})
    assert len(load_dataset(other.data_yaml, "train")) == 2
    assert not (tmp_path / "d" / "stray.txt").exists()
