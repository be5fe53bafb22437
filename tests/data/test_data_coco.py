"""COCO reader: id mapping, box conversion, crowd, errors, and the write-back round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from efficientdet.data.coco import coco_dict, load_coco, write_coco
from efficientdet.data.sample import DataError


def _coco_doc() -> dict:
    """Two images, sparse category ids 90, 1, 17 declared out of order."""
    return {
        "images": [
            {"id": 42, "file_name": "imgs/a.png", "width": 64, "height": 48},
            {"id": 7, "file_name": "imgs/b.png"},  # size from the header
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 17, "name": "cat"},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 90, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0.5, 1.5, 3, 4]},
            {"id": 3, "image_id": 42, "category_id": 17, "bbox": [30, 30, 10, 10], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 17, "bbox": [1, 2, 3, 4]},
        ],
    }


def _write(tmp_path: Path, doc: dict | str, make_image, name: str = "ann.json") -> Path:
    make_image(tmp_path / "imgs" / "a.png", 64, 48)
    make_image(tmp_path / "imgs" / "b.png", 20, 30)
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_sparse_ids_map_to_contiguous_labels_in_sorted_order(tmp_path, make_image) -> None:
    data = load_coco(_write(tmp_path, _coco_doc(), make_image))
    assert data.format == "coco"
    assert data.label_to_category_id == [1, 17, 90]
    assert data.class_names == ["person", "cat", "toothbrush"]
    assert data.category_id_to_label == {1: 0, 17: 1, 90: 2}
    first, second = data.samples
    assert first.image_id == 42 and first.size == (48, 64)
    assert first.image_path == tmp_path / "imgs" / "a.png"
    # xywh -> xyxy; labels by sorted id
    assert first.boxes.tolist() == [[10.0, 5.0, 30.0, 15.0], [0.5, 1.5, 3.5, 5.5]]
    assert first.labels.tolist() == [2, 0]
    # iscrowd kept aside, not a target
    assert first.crowd_boxes.tolist() == [[30.0, 30.0, 40.0, 40.0]]
    assert first.crowd_labels.tolist() == [1]
    assert data.issues.count("crowd_box") == 1
    assert second.size == (30, 20)  # read from the header
    assert second.labels.tolist() == [1]


def test_round_trip_back_to_user_ids(tmp_path, make_image) -> None:
    path = _write(tmp_path, _coco_doc(), make_image)
    data = load_coco(path)
    doc = coco_dict(data, relative_to=tmp_path)
    by_box = {tuple(a["bbox"]): a["category_id"] for a in doc["annotations"] if not a["iscrowd"]}
    assert by_box == {
        (10.0, 5.0, 20.0, 10.0): 90,
        (0.5, 1.5, 3.0, 4.0): 1,
        (1.0, 2.0, 3.0, 4.0): 17,
    }
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert [(a["category_id"], a["bbox"]) for a in crowd] == [(17, [30.0, 30.0, 10.0, 10.0])]
    assert {c["id"]: c["name"] for c in doc["categories"]} == {
        1: "person",
        17: "cat",
        90: "toothbrush",
    }
    # Writing and reading again gives the same samples.
    again = load_coco(write_coco(data, tmp_path / "out" / "again.json"), image_dir=None)
    assert again.label_to_category_id == data.label_to_category_id
    for a, b in zip(again.samples, data.samples, strict=True):
        assert a.image_path.resolve() == b.image_path.resolve()
        assert a.image_id == b.image_id and a.size == b.size
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.crowd_boxes, b.crowd_boxes)


def test_malformed_json_names_file_and_line(tmp_path, make_image) -> None:
    path = _write(tmp_path, '{\n  "images": [],\n  "categories": [,]\n}', make_image)
    with pytest.raises(DataError, match=r"ann.json:3: malformed JSON"):
        load_coco(path)


def test_missing_lists_are_reported(tmp_path, make_image) -> None:
    with pytest.raises(DataError, match="missing the 'categories' list"):
        load_coco(_write(tmp_path, {"images": []}, make_image))


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([1, "2", 3, 4], "'bbox' has a non-numeric value '2'"),
        ([1, 2, math.nan, 4], "'bbox' has a non-finite value nan"),
        ([1, 2, 3], "'bbox' must be [x, y, w, h], got [1, 2, 3]"),
    ],
)
def test_bad_coordinates_are_fatal(tmp_path, make_image, bbox, message) -> None:
    doc = _coco_doc()
    doc["annotations"][1]["bbox"] = bbox
    path = _write(tmp_path, doc, make_image)
    expected = f"{path}: annotations[1] (id 2): {message}"
    with pytest.raises(DataError) as err:
        load_coco(path)
    assert expected in str(err.value)
    lenient = load_coco(path, strict=False)
    assert lenient.issues.examples["invalid_annotation"] == [expected]
    assert lenient.samples[0].num_boxes == 1  # the bad annotation is skipped


def test_unknown_category_and_image_are_skipped_and_counted(tmp_path, make_image) -> None:
    doc = _coco_doc()
    doc["annotations"].append({"id": 5, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5]})
    doc["annotations"].append({"id": 6, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]})
    data = load_coco(_write(tmp_path, doc, make_image))
    assert data.issues.count("unknown_category") == 1
    assert "category_id 3 is not in 'categories'" in data.issues.examples["unknown_category"][0]
    assert data.issues.count("unknown_image_id") == 1
    assert data.num_boxes == 3


def test_duplicate_ids(tmp_path, make_image) -> None:
    doc = _coco_doc()
    doc["images"].append({"id": 42, "file_name": "imgs/b.png", "width": 20, "height": 30})
    doc["annotations"].append({"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]})
    path = _write(tmp_path, doc, make_image)
    with pytest.raises(DataError, match="image id 42 names both 'imgs/a.png' and 'imgs/b.png'"):
        load_coco(path)
    data = load_coco(path, strict=False)
    assert data.issues.count("duplicate_image_id") == 1
    assert data.issues.count("duplicate_annotation_id") == 1
    assert [s.image_id for s in data.samples] == [42, 7]


def test_missing_image_clipping_and_degenerate(tmp_path, make_image) -> None:
    doc = _coco_doc()
    doc["images"].append({"id": 8, "file_name": "imgs/gone.png", "width": 10, "height": 10})
    doc["annotations"] += [
        {"id": 10, "image_id": 42, "category_id": 1, "bbox": [50, 40, 30, 30]},  # clipped
        {"id": 11, "image_id": 42, "category_id": 1, "bbox": [5, 5, 0, 8]},  # zero width
        {"id": 12, "image_id": 42, "category_id": 1, "bbox": [5, 5, -3, 8]},  # negative width
    ]
    data = load_coco(_write(tmp_path, doc, make_image))
    assert [s.image_id for s in data.samples] == [42, 7]
    assert data.issues.count("missing_image") == 1
    assert "imgs/gone.png" in data.issues.examples["missing_image"][0]
    assert data.issues.count("box_clipped") == 1
    assert data.issues.count("box_degenerate") == 2
    assert data.samples[0].boxes[-1].tolist() == [50.0, 40.0, 64.0, 48.0]
