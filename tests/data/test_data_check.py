"""check_dataset on data with each kind of problem; fatal versus warnings; the level rule."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from efficientdet.data.check import assign_levels, check_dataset, format_report
from efficientdet.data.coco import load_coco
from efficientdet.data.sample import DetectionData, DetectionSample


def test_assign_levels_nearest_anchor_hand_computed() -> None:
    # Anchor sizes 4 * 2**l: P3 32, P4 64, P5 128, P6 256, P7 512; nearest in log2.
    sides = [10.0, 32.0, 45.0, 46.0, 64.0, 100.0, 200.0, 362.0, 363.0, 2000.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    assert assign_levels(boxes).tolist() == [3, 3, 3, 4, 4, 5, 6, 6, 7, 7]
    # Non-square: the side is sqrt(w * h): 16 x 256 -> 64 -> P4.
    assert assign_levels(torch.tensor([[0.0, 0.0, 16.0, 256.0]])).tolist() == [4]


def _problem_dataset(tmp_path: Path, make_image) -> Path:
    """A COCO file with one of every problem the readers and the check can see."""
    for name in ("ok", "empty", "wrongsize"):
        make_image(tmp_path / f"{name}.png", 64, 64)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    doc = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "empty.png", "width": 64, "height": 64},
            {"id": 3, "file_name": "wrongsize.png", "width": 100, "height": 80},
            {"id": 4, "file_name": "corrupt.png", "width": 64, "height": 64},
            {"id": 5, "file_name": "missing.png", "width": 64, "height": 64},
            {"id": 1, "file_name": "ok.png", "width": 64, "height": 64},  # repeated entry
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 40, 40]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30]},  # clipped
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10]},  # degenerate
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},  # unknown
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [1, 1, 8, 8]},  # dup ann id
            {"id": 6, "image_id": 4, "category_id": 1, "bbox": [1, 1, 30, 30]},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_each_problem_is_found_and_only_warnings(tmp_path, make_image) -> None:
    report = check_dataset(_problem_dataset(tmp_path, make_image), input_size=128)
    counts = dict(report.issues.counts)
    assert counts["box_clipped"] == 1
    assert counts["box_degenerate"] == 1
    assert counts["unknown_category"] == 1
    assert counts["duplicate_annotation_id"] == 1
    assert counts["duplicate_image"] == 1
    assert counts["missing_image"] == 1  # by the reader
    assert counts["unreadable_image"] == 1  # by decoding
    assert counts["size_mismatch"] == 1
    assert counts["image_without_boxes"] == 1
    assert counts["class_without_boxes"] == 2  # b (its box was degenerate) and c
    assert report.bad_image_ids == [4]
    assert not report.fatal and report.fatal_kinds == []
    assert "box_clipped" in report.warning_kinds
    assert report.num_images == 4 and report.images_without_boxes == 1
    assert report.class_counts == [4, 0, 0]
    # sides at input 128 (x2 for the 64 px images, x1.28 for the 100x80 one): 80, 28, 10.24, 60
    assert report.level_counts == {3: 2, 4: 2, 5: 0, 6: 0, 7: 0}
    assert counts["tiny_box"] == 1
    text = format_report(report)
    assert text.startswith(f"Dataset {tmp_path / 'ann.json'} (coco): OK, with warnings")
    assert "boxes per pyramid level (nearest anchor size, at input 128x128)" in text
    assert "  warning:\n" in text and "    box_clipped: 1" in text
    assert "missing.png" in text
    # The loaded data can be cleaned with the ids the check found.
    data = load_coco(tmp_path / "ann.json")
    assert [s.image_id for s in data.without_images(report.bad_image_ids)] == [1, 2, 3]


def test_unreadable_annotation_file_is_fatal(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [}')
    report = check_dataset(path)
    assert report.fatal and report.fatal_kinds == ["unreadable_annotation"]
    assert "broken.json:1: malformed JSON" in format_report(report)
    assert (
        format_report(report)
        .splitlines()[0]
        .endswith("FATAL: fix the problems below before training")
    )


def test_malformed_values_are_fatal_in_the_report(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png", 16, 16)
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, "x", 3, 4]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    report = check_dataset(tmp_path / "ann.json")
    assert report.fatal_kinds == ["invalid_annotation", "no_boxes"]


def test_no_images_and_no_boxes_are_fatal(tmp_path, make_image) -> None:
    empty = DetectionData([], ["a"], [0], "coco", tmp_path)
    assert check_dataset(empty).fatal_kinds == ["no_images"]
    path = make_image(tmp_path / "a.png", 16, 16)
    negatives = DetectionData(
        [DetectionSample(path, 1, (16, 16), [], [])], ["a"], [0], "voc", tmp_path
    )
    report = check_dataset(negatives, decode_images=False)
    assert report.fatal_kinds == ["no_boxes"]
    assert report.level_counts == {3: 0, 4: 0, 5: 0, 6: 0, 7: 0}


def test_hand_built_data_duplicate_ids_and_bad_labels(tmp_path, make_image) -> None:
    a = make_image(tmp_path / "a.png", 32, 32)
    b = make_image(tmp_path / "b.png", 32, 32)
    samples = [
        DetectionSample(a, 1, (32, 32), [[0, 0, 10, 10]], [0]),
        DetectionSample(b, 1, (32, 32), [[0, 0, 10, 10], [1, 1, 9, 9]], [1, 5]),
    ]
    report = check_dataset(DetectionData(samples, ["x", "y"], [0, 1], "voc", tmp_path))
    assert report.fatal_kinds == ["duplicate_image_id"]
    assert report.issues.count("unknown_category") == 1
    assert report.class_counts == [1, 1]
