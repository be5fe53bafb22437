"""Bad annotations through ``check-data`` and ``train``: refuse what cannot work, warn on fixes.

tests/data/ checks each reader's rules; here each broken dataset of a generated corpus goes
through the commands a user runs. A dataset that cannot work makes ``check-data`` exit 1 and
``train`` exit 2 before anything is written, with a message naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from efficientdet.data import DataError, check_dataset, load_dataset

IMAGES = ("a.png", "b.png", "c.png", "d.png")
WIDTH, HEIGHT = 64, 48


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(IMAGES):
        Image.new("RGB", (WIDTH, HEIGHT), (40 * i, 90, 160)).save(folder / name)


def _coco_doc() -> dict:
    return {
        "images": [
            {"id": i, "file_name": name, "width": WIDTH, "height": HEIGHT}
            for i, name in enumerate(IMAGES, start=1)
        ],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 6, 30, 20], "iscrowd": 0}
            for i in range(1, len(IMAGES) + 1)
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _coco(root: Path, edit: Callable[[dict], object] | None = None, text: str | None = None) -> Path:
    _images(root)
    path = root / "annotations.json"
    doc = _coco_doc()
    if edit is not None:
        edit(doc)  # changes the document in place; what it returns is ignored
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def _set(doc: dict, section: str, index: int, key: str, value: object) -> None:
    doc[section][index][key] = value


def _voc(root: Path, xml: str) -> Path:
    _images(root / "JPEGImages")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(xml)
    return root


def _voc_xml(xmin: str = "4") -> str:
    return (
        "<annotation><filename>a.png</filename>"
        f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
        "<object><name>cat</name><difficult>0</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>6</ymin><xmax>30</xmax><ymax>40</ymax>"
        "</bndbox></object></annotation>"
    )


def _yolo(root: Path, line: str) -> Path:
    _images(root / "images")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    (root / "classes.txt").write_text("cat\n")
    return root


def _yaml(root: Path, text: str) -> Path:
    _coco(root)
    path = root / "data.yaml"
    path.write_text(text)
    return path


# name -> (writer of the dataset into a folder, file the message names, what it says)
FATAL_CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "malformed_json": (
        lambda root: _coco(root, text='{"images": [{"id": 1,'), "annotations.json", "malformed JSON"
    ),
    "json_not_an_object": (lambda root: _coco(root, text="[1, 2, 3]"), "annotations.json", "expected a JSON object"),
    "no_categories": (
        lambda root: _coco(root, lambda d: d.pop("categories")), "annotations.json",
        "missing the 'categories' list",
    ),
    "nan_coordinate": (
        lambda root: _coco(root, lambda d: _set(d, "annotations", 0, "bbox", [float("nan"), 1, 9, 9])),
        "annotations.json", "non-finite value nan",
    ),
    "string_coordinate": (
        lambda root: _coco(root, lambda d: _set(d, "annotations", 1, "bbox", ["4", 6, 30, 20])),
        "annotations.json", "non-numeric value '4'",
    ),
    "bbox_of_three_numbers": (
        lambda root: _coco(root, lambda d: _set(d, "annotations", 2, "bbox", [4, 6, 30])),
        "annotations.json", "'bbox' must be [x, y, w, h]",
    ),
    "string_category_id": (
        lambda root: _coco(root, lambda d: _set(d, "annotations", 0, "category_id", "cat")),
        "annotations.json", "'category_id' must be an integer",
    ),
    "missing_category_id": (
        lambda root: _coco(root, lambda d: d["annotations"][0].pop("category_id")),
        "annotations.json", "'category_id' must be an integer",
    ),
    "duplicate_image_id": (
        lambda root: _coco(root, lambda d: _set(d, "images", 1, "id", 1)),
        "annotations.json", "image id 1 names both 'a.png' and 'b.png'",
    ),
    "duplicate_category_id": (
        lambda root: _coco(root, lambda d: d["categories"].append({"id": 2, "name": "cow"})),
        "annotations.json", "category id 2 is declared twice",
    ),
    "empty_dataset": (
        lambda root: _coco(root, lambda d: d.update(images=[], annotations=[])),
        "annotations.json", "no usable images",
    ),
    "every_image_missing": (
        lambda root: _coco(root, lambda d: [img.update(file_name=f"gone/{img['file_name']}") for img in d["images"]]),
        "annotations.json", "no usable images",
    ),
    "no_boxes_at_all": (
        lambda root: _coco(root, lambda d: d.update(annotations=[])), "annotations.json", "no boxes",
    ),
    "malformed_xml": (
        lambda root: _voc(root, _voc_xml()[:-20]), "a.xml", "malformed XML",
    ),
    "xml_coordinate_not_a_number": (
        lambda root: _voc(root, _voc_xml(xmin="left")), "a.xml", "<xmin> is not a number: 'left'",
    ),
    "yolo_coordinate_not_a_number": (
        lambda root: _yolo(root, "0 0.5 0.5 wide 0.2"), "a.txt:2", "is not a number: 'wide'",
    ),
    "yolo_nan_coordinate": (
        lambda root: _yolo(root, "0 nan 0.5 0.2 0.2"), "a.txt:2", "is not finite: 'nan'",
    ),
    "yolo_class_not_an_integer": (
        lambda root: _yolo(root, "cat 0.5 0.5 0.2 0.2"), "a.txt:2", "class is not a number: 'cat'",
    ),
    "malformed_yaml": (
        lambda root: _yaml(root, "train: [annotations.json\nval: x\n"), "data.yaml", "malformed YAML",
    ),
    "yaml_without_the_split": (
        lambda root: _yaml(root, "val: annotations.json\n"), "data.yaml", "no split 'train'",
    ),
}


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_check_data_reports_a_dataset_that_cannot_work(cli, tmp_path, case) -> None:
    write, file_name, problem = FATAL_CASES[case]
    path = write(tmp_path / "data")
    status, stdout, stderr = cli("check-data", "--data", path, "--no-decode")
    assert status == 1, stdout + stderr
    assert "FATAL" in stdout
    assert file_name in stdout and problem in stdout, stdout


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_training_refuses_to_start_on_a_dataset_that_cannot_work(
    cli, train_argv, tmp_path, case
) -> None:
    write, file_name, problem = FATAL_CASES[case]
    path = write(tmp_path / "data")
    run = tmp_path / "run"
    status, stdout, stderr = cli(*train_argv(f"data.train={path}", f"run.out_dir={run}"))
    assert status == 2, stdout + stderr
    assert stderr.startswith("efficientdet train: error: ")
    if problem not in ("no usable images", "no boxes"):
        assert file_name in stderr and problem in stderr, stderr
    else:  # the reader found nothing to train on; the message names the dataset
        assert f"{path}: no images with boxes to train on" in stderr
    assert not run.exists(), "nothing may be written for a run that does not start"


def test_strict_loading_raises_data_error_naming_the_file(tmp_path) -> None:
    for case, (write, file_name, problem) in FATAL_CASES.items():
        path = write(tmp_path / case)
        if problem in ("no usable images", "no boxes"):
            continue  # readable but empty: the checker and the trainer refuse it
        with pytest.raises(DataError) as info:
            load_dataset(path, "train")
        assert file_name in str(info.value) and problem in str(info.value), case


def _fixable(root: Path) -> Path:
    """Every problem the readers fix or skip, each once, in an otherwise good COCO file."""

    def edit(doc: dict) -> None:
        doc["annotations"] += [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [50, 30, 40, 40]},  # outside
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [10, 10, -5, 8]},  # negative
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [10, 10, 0, 0]},  # zero size
            {"id": 13, "image_id": 3, "category_id": 7, "bbox": [4, 4, 9, 9]},  # unknown class
            {"id": 14, "image_id": 99, "category_id": 1, "bbox": [4, 4, 9, 9]},  # unknown image
            {"id": 14, "image_id": 4, "category_id": 1, "bbox": [20, 4, 9, 9]},  # repeated id
        ]
        doc["images"].append({"id": 5, "file_name": "missing.png", "width": 64, "height": 48})
        doc["images"].append(dict(doc["images"][0]))  # the same image listed twice

    return _coco(root, edit)


FIXED_KINDS = (
    "box_clipped", "box_degenerate", "unknown_category", "unknown_image_id", "missing_image",
    "duplicate_annotation_id", "duplicate_image",
)


def test_check_data_warns_on_fixable_problems(cli, tmp_path) -> None:
    path = _fixable(tmp_path / "data")
    status, stdout, _ = cli("check-data", "--data", path, "--image-size", "128")
    assert status == 0, stdout
    assert "OK, with warnings" in stdout
    for kind in FIXED_KINDS:
        assert f"{kind}: " in stdout, kind
    report = check_dataset(path)
    assert report.issues.count("box_degenerate") == 2
    assert f"{path}: image 5 (missing.png): file not found" in stdout


def test_training_starts_on_fixable_problems_and_warns(
    cli, train_argv, tmp_path, caplog
) -> None:
    path = _fixable(tmp_path / "data")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        status, stdout, stderr = cli(*train_argv(
            f"data.train={path}", f"run.out_dir={run}", "run.max_steps=1",
        ))
    assert status == 0, stderr
    assert "finished: 1/1 steps" in stdout
    warned = [r.getMessage() for r in caplog.records if "(fixed while loading)" in r.getMessage()]
    for kind in FIXED_KINDS:
        assert any(message.startswith(f"{path}: ") and kind in message for message in warned), kind
    assert (run / "state.pt").is_file()


def test_validation_set_with_other_classes_is_refused(cli, train_argv, tmp_path) -> None:
    train = _coco(tmp_path / "train")
    val = _coco(tmp_path / "val", lambda d: d["categories"].append({"id": 3, "name": "cow"}))
    status, _, stderr = cli(*train_argv(
        f"data.train={train}", f"data.val={val}", f"run.out_dir={tmp_path / 'run'}",
    ))
    assert status == 2
    assert "validation classes ['cat', 'dog', 'cow'] differ from training classes ['cat', 'dog']" in stderr
