"""Pascal VOC reader: splits, 1-based corners, difficult flag, class names, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from efficientdet.data.sample import DataError
from efficientdet.data.voc import load_voc


def _object(name: str, box: tuple, difficult: int = 0) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
        "</object>"
    )


def _xml(filename: str, objects: list[str], size: tuple[int, int] | None = (40, 60)) -> str:
    size_xml = ""
    if size is not None:
        size_xml = f"<size><width>{size[1]}</width><height>{size[0]}</height></size>"
    return f"<annotation><filename>{filename}</filename>{size_xml}{''.join(objects)}</annotation>"


def _voc(tmp_path: Path, make_image, files: dict[str, str], splits: dict[str, list[str]]) -> Path:
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    for stem, text in files.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        make_image(root / "JPEGImages" / f"{stem}.jpg", 60, 40)
    if splits:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, stems in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def test_split_corners_difficult_and_class_names(tmp_path, make_image) -> None:
    files = {
        "000001": _xml(
            "000001.jpg", [_object("dog", (11, 21, 30, 35)), _object("cat", (1, 1, 5, 5), 1)]
        ),
        "000002": _xml("000002.jpg", [_object("person", (2, 3, 4, 6))]),
        "000003": _xml("000003.jpg", [_object("zebra", (2, 3, 10, 12))]),  # only in val
    }
    root = _voc(tmp_path, make_image, files, {"train": ["000001", "000002"], "val": ["000003"]})
    data = load_voc(root, "train")
    # Names from every file of the folder, so train and val share one table.
    assert data.class_names == ["cat", "dog", "person", "zebra"]
    assert data.label_to_category_id == [0, 1, 2, 3]
    assert [s.image_id for s in data.samples] == [1, 2]
    first = data.samples[0]
    assert first.size == (40, 60)
    assert first.boxes.tolist() == [[10.0, 20.0, 30.0, 35.0], [0.0, 0.0, 5.0, 5.0]]
    assert first.labels.tolist() == [1, 0]
    assert first.difficult.tolist() == [False, True]
    assert first.image_path == root / "JPEGImages" / "000001.jpg"
    val = load_voc(root, "val")
    assert val.class_names == data.class_names and val.samples[0].labels.tolist() == [3]


def test_zero_based_option_and_size_from_header(tmp_path, make_image) -> None:
    files = {"a": _xml("a.jpg", [_object("dog", (11, 21, 30, 35))], size=None)}
    data = load_voc(_voc(tmp_path, make_image, files, {}), one_based=False)
    assert data.samples[0].size == (40, 60)
    assert data.samples[0].boxes.tolist() == [[11.0, 21.0, 30.0, 35.0]]


def test_given_class_names_skip_unknown(tmp_path, make_image) -> None:
    files = {"a": _xml("a.jpg", [_object("dog", (1, 1, 9, 9)), _object("cow", (1, 1, 9, 9))])}
    data = load_voc(_voc(tmp_path, make_image, files, {}), class_names=["person", "dog"])
    assert data.class_names == ["person", "dog"]
    assert data.samples[0].labels.tolist() == [1]
    assert data.issues.count("unknown_category") == 1
    assert "class 'cow'" in data.issues.examples["unknown_category"][0]


def test_malformed_xml_names_file_and_line(tmp_path, make_image) -> None:
    files = {
        "a": "<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</oops>\n</annotation>"
    }
    root = _voc(tmp_path, make_image, files, {})
    with pytest.raises(DataError, match=r"Annotations/a.xml:3: malformed XML"):
        load_voc(root)
    assert load_voc(root, strict=False).issues.count("unreadable_annotation") == 1


def test_non_numeric_coordinate_is_fatal(tmp_path, make_image) -> None:
    files = {
        "a": _xml("a.jpg", [_object("dog", (1, "abc", 9, 9)), _object("cat", (1, 1, 9, "nan"))])
    }
    root = _voc(tmp_path, make_image, files, {})
    with pytest.raises(DataError) as err:
        load_voc(root)
    message = str(err.value)
    assert "a.xml: object #1 ('dog'): <ymin> is not a number: 'abc'" in message
    assert "a.xml: object #2 ('cat'): <ymax> is missing or not finite: 'nan'" in message


def test_missing_image_split_file_and_folder(tmp_path, make_image) -> None:
    files = {"a": _xml("a.jpg", [_object("dog", (1, 1, 9, 9))]), "b": _xml("b.jpg", [])}
    root = _voc(tmp_path, make_image, files, {"train": ["a", "b", "c"]})
    (root / "JPEGImages" / "b.jpg").unlink()
    data = load_voc(root, "train")
    assert len(data) == 1
    assert data.issues.count("missing_image") == 1
    assert data.issues.count("missing_annotation") == 1
    with pytest.raises(
        DataError, match=r"test.txt: split file not found; available splits: \['train'\]"
    ):
        load_voc(root, "test")
    with pytest.raises(DataError, match="no Annotations/ folder"):
        load_voc(tmp_path)
