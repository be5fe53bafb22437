"""The dataset families of ``benchmarks/families.py``: a set is a function of its seed, each
family has the property that defines it, and validation shows no object that training showed."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from families import FAMILIES, Family, write_family  # noqa: E402
from family_objects import CUTOUTS, KINDS, draw  # noqa: E402

HELD_OUT = ("digit:", "face:", "fill:")  # instance keys of the kinds with held-out instances


def _write(root: Path, family: str, *, seed: int = 1, num_train: int = 30, num_val: int = 10, **knobs) -> Path:
    return write_family(root / f"{family}-{seed}", family, seed=seed, num_train=num_train, num_val=num_val, **knobs)


def _coco(data_yaml: Path, split: str) -> dict:
    return json.loads((data_yaml.parent / f"annotations_{split}.json").read_text())


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: _write(root, name) for name in FAMILIES}


def _sides(doc: dict) -> np.ndarray:
    return np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in doc["annotations"]])


def test_a_set_is_a_function_of_its_seed(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", "clutter", num_train=4, num_val=2)
    b = _write(tmp_path / "b", "clutter", num_train=4, num_val=2)
    c = _write(tmp_path / "c", "clutter", seed=2, num_train=4, num_val=2)
    for split in ("train", "val"):
        assert _coco(a, split) == _coco(b, split)
        assert (a.parent / split / "000001.jpg").read_bytes() == (b.parent / split / "000001.jpg").read_bytes()
    assert _coco(a, "train") != _coco(c, "train")


def test_every_family_loads_and_keeps_its_classes(sets: dict[str, Path]) -> None:
    for name, data_yaml in sets.items():
        family = FAMILIES[name]
        train = load_dataset(data_yaml, "train")
        val = load_dataset(data_yaml, "val")
        assert train.num_classes == len(family.classes) and val.class_names == train.class_names
        assert sum(s.num_boxes for s in train.samples) > 0, name
        ids = sorted(c["id"] for c in _coco(data_yaml, "train")["categories"])
        assert ids == sorted(family.category_ids)
        for sample in train.samples:  # boxes inside their images
            h, w = sample.size
            assert bool((sample.boxes[:, :2] >= 0).all() and (sample.boxes[:, 2] <= w).all()
                        and (sample.boxes[:, 3] <= h).all()), name


def test_validation_shows_no_object_training_showed(sets: dict[str, Path]) -> None:
    for name, data_yaml in sets.items():
        train, val = _coco(data_yaml, "train"), _coco(data_yaml, "val")
        seen = {a["instance"] for a in train["annotations"]}
        shown = {a["instance"] for a in val["annotations"]}
        assert not {k for k in shown if k.startswith(HELD_OUT)} & seen, name
        if any(c in CUTOUTS for c in FAMILIES[name].classes):  # one photo each: new backgrounds instead
            assert FAMILIES[name].holdout_backgrounds
            backgrounds = {i["background"] for i in train["images"]}
            assert not {i["background"] for i in val["images"]} & backgrounds, name


def test_aspect_has_portrait_landscape_and_wide_images_and_a_wide_size_range(sets: dict[str, Path]) -> None:
    doc = _coco(sets["aspect"], "train")
    ratios = {round(i["width"] / i["height"], 2) for i in doc["images"]}
    assert {1.33, 0.75, 1.78, 0.56} <= ratios
    sides = _sides(doc)
    assert sides.min() < 24 and sides.max() > 120
    ids = sorted(c["id"] for c in doc["categories"])
    assert ids[-1] > len(ids) and ids != list(range(ids[0], ids[0] + len(ids)))  # sparse


def test_clutter_labels_none_of_its_distractors(sets: dict[str, Path]) -> None:
    family = FAMILIES["clutter"]
    assert family.distractors[0] > 0 and family.clutter > 0
    doc = _coco(sets["clutter"], "train")
    labelled_kinds = {c["name"] for c in doc["categories"]}
    assert labelled_kinds == set(family.classes)
    assert not any(a["instance"].startswith(("digit:", "cutout:", "patch:")) for a in doc["annotations"])


def test_small_and_large(sets: dict[str, Path]) -> None:
    small = _coco(sets["small"], "train")
    per_image = Counter(a["image_id"] for a in small["annotations"])
    assert np.median(_sides(small)) < 32 and np.median(list(per_image.values())) >= 12
    large = _coco(sets["large"], "train")
    per_image = Counter(a["image_id"] for a in large["annotations"])
    assert np.median(_sides(large)) > 140 and max(per_image.values()) <= 3


def test_longtail_counts_fall_with_the_class(tmp_path: Path) -> None:
    doc = _coco(_write(tmp_path, "longtail", num_train=80, num_val=2), "train")
    order = [c["id"] for c in doc["categories"]]
    counts = Counter(a["category_id"] for a in doc["annotations"])
    values = np.array([counts.get(cid, 0) for cid in order], dtype=float)
    assert values[0] > 5 * max(1.0, values[-1])
    ranks = np.argsort(np.argsort(-values))  # 0 = most frequent
    assert np.corrcoef(ranks, np.arange(len(values)))[0, 1] > 0.8


def test_classes30_has_thirty_classes(sets: dict[str, Path]) -> None:
    doc = _coco(sets["classes30"], "train")
    assert [c["id"] for c in doc["categories"]] == list(range(1, 31))
    assert len({a["category_id"] for a in doc["annotations"]}) >= 25


def test_gray_images_are_gray_with_the_contrast_cut(tmp_path: Path) -> None:
    gray = _write(tmp_path / "low", "gray", num_train=3, num_val=1)
    full = _write(tmp_path / "full", "gray", num_train=3, num_val=1, contrast=1.0)
    for i in range(1, 4):
        low = Image.open(gray.parent / "train" / f"{i:06d}.jpg")
        assert low.mode == "L"
        ratio = np.asarray(low, dtype=float).std() / np.asarray(Image.open(full.parent / "train" / f"{i:06d}.jpg"),
                                                                  dtype=float).std()
        assert ratio == pytest.approx(0.4, abs=0.03)


def test_empty_has_a_fifth_of_the_images_without_objects(sets: dict[str, Path]) -> None:
    for split, count in (("train", 30), ("val", 10)):
        doc = _coco(sets["empty"], split)
        with_objects = {a["image_id"] for a in doc["annotations"]}
        assert count - len(with_objects) >= round(0.2 * count)


def test_objects_are_cut_to_their_alpha() -> None:
    rng = np.random.default_rng(0)
    assert len(set(KINDS)) == len(KINDS)
    for kind in KINDS:
        rgb, alpha, key = draw(rng, kind, 40.0, "train")
        assert alpha.ndim == 2 and min(alpha.shape) >= 3, kind
        assert (alpha[0] >= 0.5).any() and (alpha[-1] >= 0.5).any() and (alpha[:, 0] >= 0.5).any(), kind
        assert rgb is None or rgb.shape == (*alpha.shape, 3)
    with pytest.raises(ValueError, match="unknown object kind"):
        draw(rng, "unicorn", 40.0, "train")


def test_family_knobs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown object kinds"):
        Family(classes=("unicorn",))
    with pytest.raises(ValueError, match="distinct"):
        Family(classes=("circle", "circle"))
    with pytest.raises(ValueError, match="both a class and a distractor"):
        Family(classes=("circle",), distractor_kinds=("circle",))
    with pytest.raises(ValueError, match="distinct"):
        Family(classes=("circle", "square"), ids=(1, 1))
    with pytest.raises(ValueError, match="unknown family"):
        write_family(tmp_path, "fog", seed=0, num_train=1, num_val=1)
