"""The sample type, the issue log and the shared box fixes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efficientdet.data.sample import (
    DataError,
    DetectionData,
    DetectionSample,
    IssueLog,
    fix_boxes,
    read_image_size,
)


def test_fix_boxes_clips_and_drops_hand_computed() -> None:
    issues = IssueLog()
    boxes = torch.tensor(
        [
            [10.0, 10.0, 20.0, 20.0],  # inside
            [-5.0, 2.0, 30.0, 50.0],  # clipped on left, right and bottom
            [5.0, 5.0, 5.0, 9.0],  # zero width: degenerate
            [60.0, 5.0, 70.0, 9.0],  # wholly right of the image: degenerate after clipping
            [8.0, 7.0, 3.0, 9.0],  # negative width
        ]
    )
    fixed, keep = fix_boxes(boxes, (40, 50), issues, "x.json")
    assert keep.tolist() == [True, True, False, False, False]
    assert fixed.tolist() == [[10.0, 10.0, 20.0, 20.0], [0.0, 2.0, 30.0, 40.0]]
    assert issues.count("box_clipped") == 1
    assert issues.count("box_degenerate") == 3
    assert issues.examples["box_degenerate"][0].startswith("x.json: 3 box(es)")


def test_fix_boxes_min_size_and_tolerance() -> None:
    issues = IssueLog()
    boxes = torch.tensor([[0.0, 0.0, 0.5, 10.0], [0.0, 0.0, 50.0005, 10.0]])
    fixed, keep = fix_boxes(boxes, (40, 50), issues, "f", min_size=1.0)
    assert keep.tolist() == [False, True]
    assert fixed.tolist() == [[0.0, 0.0, 50.0, 10.0]]
    assert issues.count("box_clipped") == 0  # float noise below the tolerance


coordinate = st.floats(-200.0, 200.0, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), max_size=8),
    height=st.integers(1, 120),
    width=st.integers(1, 120),
)
def test_fix_boxes_invariants(boxes, height, width) -> None:
    issues = IssueLog()
    raw = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    fixed, keep = fix_boxes(raw, (height, width), issues, "f")
    assert fixed.shape == (int(keep.sum()), 4)
    assert torch.all(fixed >= 0)
    assert torch.all(fixed[:, [0, 2]] <= width) and torch.all(fixed[:, [1, 3]] <= height)
    assert torch.all(fixed[:, 2:] - fixed[:, :2] >= 1.0)
    assert issues.count("box_degenerate") == len(boxes) - fixed.shape[0]
    # Boxes already inside stay exactly as they were.
    inside = (raw[:, :2] >= 0).all(1) & (raw[:, 2] <= width) & (raw[:, 3] <= height)
    assert torch.equal(fixed[inside[keep]], raw[inside & keep])


def test_issue_log_severity_examples_and_raise() -> None:
    log = IssueLog(max_examples=2)
    for i in range(3):
        log.add("invalid_annotation", f"a.txt:{i + 1}: bad")
    log.add("box_clipped", "b", count=5)
    assert log.count("invalid_annotation") == 3
    assert log.examples["invalid_annotation"] == ["a.txt:1: bad", "a.txt:2: bad"]
    assert log.kinds("fatal") == ["invalid_annotation"]
    assert log.kinds("warning") == ["box_clipped"]
    with pytest.raises(DataError) as err:
        log.raise_if_fatal("root")
    assert str(err.value) == (
        "root: 3 fatal problem(s) in the annotations:\n  a.txt:1: bad\n  a.txt:2: bad"
        "\n  ... and 1 more"
    )
    with pytest.raises(ValueError, match="unknown issue kind"):
        log.add("no_such_kind", "x")


def test_sample_validates_and_loads_lazily(tmp_path, make_image) -> None:
    path = make_image(tmp_path / "a.png", 30, 20, color=(10, 200, 30))
    sample = DetectionSample(path, 7, (20, 30), [[1, 2, 3, 4]], [2])
    assert sample.boxes.dtype == torch.float32 and sample.labels.dtype == torch.int64
    assert sample.difficult.tolist() == [False]
    assert sample.crowd_boxes.shape == (0, 4)
    image = sample.load_image()
    assert image.mode == "RGB" and image.size == (30, 20)
    assert image.getpixel((0, 0)) == (10, 200, 30)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        DetectionSample(path, 1, (20, 30), [[0, 0, 1, 1], [0, 0, 2, 2]], [0])
    missing = DetectionSample(tmp_path / "nope.png", 1, (5, 5), [], [])
    with pytest.raises(DataError, match="nope.png: cannot read image"):
        missing.load_image()


def test_read_image_size_header_only(tmp_path, make_image) -> None:
    path = make_image(tmp_path / "b.jpg", 33, 17)
    assert read_image_size(path) == (17, 33)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        read_image_size(bad)


def test_detection_data_subset_and_mapping(tmp_path) -> None:
    samples = [DetectionSample(tmp_path / f"{i}.png", i + 10, (4, 4), [], []) for i in range(3)]
    data = DetectionData(samples, ["a", "b"], [3, 90], "coco", tmp_path)
    assert data.num_classes == 2 and data.category_id_to_label == {3: 0, 90: 1}
    assert [s.image_id for s in data.without_images([11])] == [10, 12]
    assert [s.image_id for s in data.subset([2, 0])] == [12, 10]
    with pytest.raises(ValueError, match="unique"):
        DetectionData(samples, ["a", "b"], [3, 3], "coco", tmp_path)


def test_exif_rotated_images_are_read_upright(tmp_path) -> None:
    """A phone photo stored 40x20 (w x h) with EXIF orientation 6 (rotate 90 degrees
    clockwise) is 20x40 upright; sizes, pixels, YOLO boxes and the data check all use that."""
    from PIL import Image

    from efficientdet.data.check import check_dataset
    from efficientdet.data.yolo import load_yolo

    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red: upright, the top quarter
    exif = stored.getexif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    path = tmp_path / "images" / "phone.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    assert read_image_size(path) == (40, 20)
    sample = DetectionSample(path, 1, (40, 20), [], [])
    upright = sample.load_image()
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 3)), upright.getpixel((10, 36))
    assert top[0] > 200 > top[1] and bottom[0] < 50

    # A box over the upper half of the upright image, normalised to its 20x40 size.
    (tmp_path / "labels" / "phone.txt").write_text("0 0.5 0.25 1.0 0.5\n")
    (tmp_path / "classes.txt").write_text("thing\n")
    data = load_yolo(tmp_path)
    assert data.samples[0].size == (40, 20)
    assert data.samples[0].boxes.tolist() == [[0.0, 0.0, 20.0, 20.0]]
    report = check_dataset(data)
    assert report.issues.count("size_mismatch") == 0


def test_png_orientation_is_read_from_its_header_and_bad_exif_is_a_data_error(
    tmp_path, monkeypatch
) -> None:
    from PIL import Image, ImageOps

    stored = Image.new("RGB", (40, 20))
    exif = stored.getexif()
    exif[0x0112] = 8
    path = tmp_path / "turned.png"
    stored.save(path, exif=exif.tobytes())
    assert read_image_size(path) == (40, 20)
    sample = DetectionSample(path, 1, (40, 20), [], [])
    assert sample.load_image().size == (20, 40)

    def broken(image):  # what Pillow has raised on malformed EXIF tags
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with pytest.raises(DataError, match="turned.png: cannot read image: unreadable EXIF"):
        sample.load_image()
