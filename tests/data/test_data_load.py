"""load_dataset: format detection and YAML data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientdet.data.load import detect_format, load_dataset
from efficientdet.data.sample import DataError


def _coco(root: Path, make_image, name: str, image_dir: Path | None = None) -> Path:
    image_dir = image_dir or root
    make_image(image_dir / "img" / f"{name}.png", 32, 24)
    doc = {
        "images": [{"id": 1, "file_name": f"img/{name}.png", "width": 32, "height": 24}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10]}],
    }
    path = root / f"annotations_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _yolo(root: Path, make_image, split: str) -> None:
    make_image(root / "images" / split / f"{split}.png", 40, 20)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split / f"{split}.txt").write_text("1 0.5 0.5 0.5 0.5\n")


def test_detect_each_format(tmp_path, make_image) -> None:
    coco = _coco(tmp_path / "c", make_image, "train")
    assert detect_format(coco) == "coco"
    assert detect_format(tmp_path / "c") == "coco"  # annotations_{split}.json in a folder
    (tmp_path / "v" / "Annotations").mkdir(parents=True)
    assert detect_format(tmp_path / "v") == "voc"
    _yolo(tmp_path / "y", make_image, "train")
    assert detect_format(tmp_path / "y") == "yolo"
    (tmp_path / "y" / "data.yaml").write_text("train: images/train\n")
    assert detect_format(tmp_path / "y") == "yaml"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "missing.json")
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(DataError, match="expected a COCO .json or a YAML data file"):
        load_dataset(tmp_path / "x.csv")


def test_yaml_with_coco_entries(tmp_path, make_image) -> None:
    _coco(tmp_path, make_image, "train")
    _coco(tmp_path / "ann", make_image, "val", image_dir=tmp_path / "images_val")
    (tmp_path / "data.yaml").write_text(
        "path: .\n"
        "train: annotations_train.json\n"
        "valid: {annotations: ann/annotations_val.json, images: images_val}\n"
    )
    train = load_dataset(tmp_path, "train")
    assert train.format == "coco" and train.label_to_category_id == [5]
    val = load_dataset(tmp_path / "data.yaml", "val")  # "val" finds the "valid" entry
    assert val.samples[0].image_path == tmp_path / "images_val" / "img" / "val.png"
    with pytest.raises(DataError, match=r"no split 'test'; entries: \['train', 'valid'\]"):
        load_dataset(tmp_path, "test")


def test_yaml_ultralytics_style_yolo(tmp_path, make_image) -> None:
    root = tmp_path / "ds"
    _yolo(root, make_image, "train")
    _yolo(root, make_image, "val")
    (tmp_path / "data.yaml").write_text(
        "path: ds\ntrain: images/train\nval: images/val\nnames: {0: a, 1: b}\n"
    )
    val = load_dataset(tmp_path / "data.yaml", "val")
    assert val.format == "yolo" and val.class_names == ["a", "b"]
    assert [s.image_path.name for s in val.samples] == ["val.png"]
    assert val.samples[0].boxes.tolist() == [[10.0, 5.0, 30.0, 15.0]]
    # The folder itself, without the YAML: splits by sub-folder.
    assert [s.image_path.name for s in load_dataset(root, "train")] == ["train.png"]


def test_voc_folder_and_yaml_entry(tmp_path, make_image) -> None:
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem in ("a", "b"):
        make_image(root / "JPEGImages" / f"{stem}.jpg", 20, 20)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>{stem}x</name>"
            "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
            "</object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\n")
    assert len(load_dataset(root, "train")) == 1
    (tmp_path / "voc.yaml").write_text("train: {root: VOC, split: trainval}\nnames: [ax, bx]\n")
    data = load_dataset(tmp_path / "voc.yaml", "train")
    assert data.format == "voc" and len(data) == 2 and data.class_names == ["ax", "bx"]


def test_yaml_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [a,\nval: b\n")
    with pytest.raises(DataError, match=r"bad.yaml:\d+: malformed YAML"):
        load_dataset(bad)
    odd = tmp_path / "odd.yaml"
    odd.write_text("format: tfrecord\ntrain: x\n")
    with pytest.raises(DataError, match="format 'tfrecord' is not one of coco, voc, yolo"):
        load_dataset(odd)
