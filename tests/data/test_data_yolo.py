"""YOLO reader: layouts, normalised -> pixel boxes, class names, errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.data.sample import DataError
from efficientdet.data.yolo import load_yolo, yolo_folders


def _yolo(tmp_path: Path, make_image, labels: dict[str, str], split: str | None = "train") -> Path:
    root = tmp_path / "ds"
    sub = Path(split) if split else Path()
    for stem, text in labels.items():
        make_image(root / "images" / sub / f"{stem}.png", 100, 50)
        if text is not None:
            path = root / "labels" / sub / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
    return root


def test_pixels_from_normalised_and_names_from_yaml(tmp_path, make_image) -> None:
    root = _yolo(tmp_path, make_image, {"a": "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.2 0.2\n"})
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    data = load_yolo(root, "train")
    assert data.class_names == ["cat", "dog"] and data.format == "yolo"
    sample = data.samples[0]
    assert sample.size == (50, 100)  # from the header
    expected = [[40.0, 15.0, 60.0, 35.0], [0.0, 5.0, 20.0, 15.0]]
    for got, want in zip(sample.boxes.tolist(), expected, strict=True):
        assert got == pytest.approx(want)
    assert sample.labels.tolist() == [1, 0]


def test_names_mapping_classes_txt_and_flat_layout(tmp_path, make_image) -> None:
    root = _yolo(tmp_path, make_image, {"a": "2 0.5 0.5 0.2 0.2\n"}, split=None)
    (root / "classes.txt").write_text("zero\none\ntwo\n")
    assert load_yolo(root).class_names == ["zero", "one", "two"]
    (root / "data.yaml").write_text("names: {0: a, 1: b, 2: c}\n")
    assert load_yolo(root).class_names == ["a", "b", "c"]


def test_other_layouts(tmp_path, make_image) -> None:
    root = tmp_path / "rf"
    make_image(root / "valid" / "images" / "x.jpg", 10, 10)
    (root / "valid" / "labels").mkdir(parents=True)
    assert yolo_folders(root, "valid") == (root / "valid" / "images", root / "valid" / "labels")
    make_image(root / "images" / "train" / "y.jpg", 10, 10)
    (root / "labels" / "train").mkdir(parents=True)
    images = root / "images" / "train"
    assert yolo_folders(images) == (images, root / "labels" / "train")
    # A split that does not exist never falls back to a folder of other splits.
    with pytest.raises(DataError, match="no YOLO images/labels folders for split 'test'"):
        yolo_folders(root, "test")


def test_missing_label_file_is_a_negative_and_polygon_lines(tmp_path, make_image) -> None:
    labels = {"a": None, "b": "0 0.1 0.2 0.5 0.2 0.3 0.8\n"}
    data = load_yolo(_yolo(tmp_path, make_image, labels), "train", class_names=["x"])
    assert [s.num_boxes for s in data.samples] == [0, 1]
    assert data.issues.count("image_without_boxes") == 1
    assert data.samples[1].boxes[0].tolist() == pytest.approx([10.0, 10.0, 50.0, 40.0])


def test_malformed_lines_name_file_and_line(tmp_path, make_image) -> None:
    text = "0 0.5 0.5 0.1 0.1\n0 0.5 abc 0.1 0.1\n0 0.5 0.5 0.1\n1.5 0.5 0.5 0.1 0.1\n0 nan 0.5 0.1 0.1\n"
    root = _yolo(tmp_path, make_image, {"a": text})
    with pytest.raises(DataError) as err:
        load_yolo(root, "train", class_names=["x"])
    message = str(err.value)
    label = root / "labels" / "train" / "a.txt"
    assert "4 fatal problem(s)" in message
    assert f"{label}:2: value 3 is not a number: 'abc'" in message
    assert f"{label}:3: expected 'class cx cy w h' (5 values) or a polygon, got 4 values" in message
    assert f"{label}:4: class must be an integer, got '1.5'" in message
    assert f"{label}:5: value 2 is not finite: 'nan'" in message
    lenient = load_yolo(root, "train", class_names=["x"], strict=False)
    assert lenient.samples[0].num_boxes == 1


def test_unknown_class_index_and_inferred_names(tmp_path, make_image) -> None:
    root = _yolo(tmp_path, make_image, {"a": "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n"})
    data = load_yolo(root, "train", class_names=["a", "b"])
    assert data.issues.count("unknown_category") == 1
    assert "a.txt:2: class 3 is not in 0..1" in data.issues.examples["unknown_category"][0]
    inferred = load_yolo(root, "train")
    assert inferred.class_names == ["0", "1", "2", "3"]
    assert inferred.issues.count("class_names_inferred") == 1


def test_out_of_range_boxes_are_clipped(tmp_path, make_image) -> None:
    root = _yolo(tmp_path, make_image, {"a": "0 0.95 0.5 0.2 0.2\n0 0.5 0.5 0.0 0.2\n"})
    data = load_yolo(root, "train", class_names=["a"])
    assert data.samples[0].boxes.shape == (1, 4)
    assert data.samples[0].boxes[0].tolist() == pytest.approx([85.0, 20.0, 100.0, 30.0])
    assert data.issues.count("box_clipped") == 1 and data.issues.count("box_degenerate") == 1
