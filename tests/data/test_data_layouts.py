"""Datasets as labelling tools export them, read without edits by load_dataset and check-data.

Each layout is written here from the tool's documented format (supervision's own writers
where it applies): Roboflow YOLO / COCO / VOC, Ultralytics data.yaml, CVAT COCO 1.0 /
YOLO 1.1 / Pascal VOC 1.1, Label Studio YOLO, supervision as_yolo / as_pascal_voc /
as_coco, and the COCO download layout whose images are found by the loader.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from PIL import Image

from efficientdet.cli.main import main
from efficientdet.data import load_dataset
from efficientdet.data.sample import DataError

W, H = 64, 48
# Two boxes per image, xyxy pixels, classes 0 and 1.
BOXES = [(0, (8.0, 6.0, 40.0, 30.0)), (1, (20.0, 10.0, 60.0, 44.0))]
NAMES = ["cat", "dog"]


def _image(path: Path, shade: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (shade, 90, 120)).save(path)
    return path


def _yolo_lines() -> str:
    lines = []
    for cls, (x0, y0, x1, y1) in BOXES:
        cx, cy = (x0 + x1) / 2 / W, (y0 + y1) / 2 / H
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / W:.6f} {(y1 - y0) / H:.6f}")
    return "\n".join(lines) + "\n"


def _voc_xml(filename: str) -> str:
    objects = "".join(
        f"<object><name>{NAMES[cls]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1:g}</xmin>"
        f"<ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
        for cls, (x0, y0, x1, y1) in BOXES
    )
    return (
        f"<annotation><folder></folder><filename>{filename}</filename><size><width>{W}</width>"
        f"<height>{H}</height><depth>3</depth></size>{objects}</annotation>"
    )


def _coco_doc(file_names: list[str], categories: list[dict], first_id: int) -> dict:
    images, annotations = [], []
    for i, name in enumerate(file_names, start=1):
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for cls, (x0, y0, x1, y1) in BOXES:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": first_id + cls,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": categories}


def _assert_boxes(data, n_images: int) -> None:
    assert len(data) == n_images and data.class_names == NAMES
    for sample in data.samples:
        assert sample.size == (H, W)
        assert sample.labels.tolist() == [0, 1]
        for got, (_, want) in zip(sample.boxes.tolist(), BOXES, strict=True):
            assert got == pytest.approx(list(want), abs=1e-3)


def _check_data(capsys, path: Path, *args: str) -> tuple[int, str]:
    code = main(["check-data", "--data", str(path), "--no-decode", *args])
    return code, capsys.readouterr().out


# ---- Roboflow -------------------------------------------------------------------------------


def _roboflow_yolo(root: Path) -> Path:
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for i in range(n):
            _image(root / split / "images" / f"{split}{i}_jpg.rf.abc{i}.jpg")
            labels = root / split / "labels"
            labels.mkdir(parents=True, exist_ok=True)
            (labels / f"{split}{i}_jpg.rf.abc{i}.txt").write_text(_yolo_lines())
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        "nc: 2\nnames: ['cat', 'dog']\n\nroboflow:\n  workspace: ws\n  project: pets\n"
        "  version: 1\n  license: CC BY 4.0\n  url: https://universe.roboflow.com/ws/pets/1\n"
    )
    return root


def test_roboflow_yolo_with_parent_relative_splits(tmp_path, capsys) -> None:
    root = _roboflow_yolo(tmp_path / "pets.v1i.yolov8")
    _assert_boxes(load_dataset(root), 3)
    _assert_boxes(load_dataset(root / "data.yaml", "val"), 2)
    _assert_boxes(load_dataset(root, "test"), 1)
    code, out = _check_data(capsys, root, "--split", "val")
    assert code == 0 and "(yolo): OK" in out and "images: 2   boxes: 4" in out


def _roboflow_coco(root: Path) -> Path:
    categories = [
        {"id": 0, "name": "pets", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "pets"},
        {"id": 2, "name": "dog", "supercategory": "pets"},
    ]
    for split, n in (("train", 3), ("valid", 2)):
        names = [f"{split}{i}_jpg.rf.x{i}.jpg" for i in range(n)]
        for name in names:
            _image(root / split / name)
        doc = _coco_doc(names, categories, first_id=1)
        (root / split / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


def test_roboflow_coco_drops_the_empty_supercategory(tmp_path, capsys) -> None:
    root = _roboflow_coco(tmp_path / "pets.v1i.coco")
    train = load_dataset(root)
    _assert_boxes(train, 3)
    assert train.label_to_category_id == [1, 2]
    assert train.issues.count("supercategory_dropped") == 1
    message = train.issues.examples["supercategory_dropped"][0]
    assert "category id 0 ('pets') has no annotations" in message
    val = load_dataset(root, "val")  # valid/_annotations.coco.json
    _assert_boxes(val, 2)
    # The split folder's file read directly gives the same classes.
    assert load_dataset(root / "valid" / "_annotations.coco.json").class_names == NAMES
    code, out = _check_data(capsys, root)
    assert code == 0 and "supercategory_dropped: 1" in out
    assert "class_without_boxes" not in out


def test_a_category_with_boxes_is_never_dropped(tmp_path) -> None:
    categories = [
        {"id": 0, "name": "pets", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "pets"},
    ]
    _image(tmp_path / "a.jpg")
    doc = _coco_doc(["a.jpg"], categories, first_id=0)  # boxes of ids 0 and 1
    (tmp_path / "a.json").write_text(json.dumps(doc))
    data = load_dataset(tmp_path / "a.json")
    assert data.class_names == ["pets", "cat"] and data.issues.count("supercategory_dropped") == 0


def _roboflow_voc(root: Path) -> Path:
    for split, n in (("train", 3), ("valid", 2)):
        for i in range(n):
            name = f"{split}{i}_jpg.rf.v{i}"
            _image(root / split / f"{name}.jpg")
            (root / split / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg"))
    return root


def test_roboflow_voc_xml_beside_the_images(tmp_path, capsys) -> None:
    root = _roboflow_voc(tmp_path / "pets.v1i.voc")
    _assert_boxes(load_dataset(root), 3)
    _assert_boxes(load_dataset(root, "val"), 2)
    _assert_boxes(load_dataset(root / "valid"), 2)
    code, out = _check_data(capsys, root, "--split", "val")
    assert code == 0 and "(voc): OK" in out


# ---- Ultralytics ----------------------------------------------------------------------------


def test_ultralytics_yaml_with_folder_lists_and_image_list_files(tmp_path) -> None:
    root = tmp_path / "datasets" / "pets"
    for part in ("a", "b", "val"):
        _image(root / "images" / part / f"{part}.png")
        (root / "labels" / part).mkdir(parents=True)
        (root / "labels" / part / f"{part}.txt").write_text(_yolo_lines())
    (root / "val.txt").write_text("./images/val/val.png\n")
    yaml_path = tmp_path / "pets.yaml"
    yaml_path.write_text(
        "path: datasets/pets\ntrain: [images/a, images/b]\nval: val.txt\n"
        "names:\n  0: cat\n  1: dog\n"
    )
    _assert_boxes(load_dataset(yaml_path), 2)
    val = load_dataset(yaml_path, "val")
    _assert_boxes(val, 1)
    assert val.samples[0].image_path == root / "images" / "val" / "val.png"
    # A list entry naming an image that does not exist is reported with file and line.
    (root / "val.txt").write_text("./images/val/val.png\n./images/val/gone.png\n")
    lenient = load_dataset(yaml_path, "val", strict=False)
    assert lenient.issues.count("missing_image") == 1
    assert f"{root / 'val.txt'}:2: ./images/val/gone.png not found" in (
        lenient.issues.examples["missing_image"][0]
    )


def test_cvat_ultralytics_yolo_export(tmp_path, capsys) -> None:
    root = tmp_path / "task_pets-ultralytics"
    lines = []
    for i in range(2):
        _image(root / "images" / "train" / f"frame_{i:06d}.jpg")
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"frame_{i:06d}.txt").write_text(_yolo_lines())
        lines.append(f"images/train/frame_{i:06d}.jpg")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("path: ./\ntrain: train.txt\nnames:\n  0: cat\n  1: dog\n")
    data = load_dataset(root)
    _assert_boxes(data, 2)
    assert data.issues.count("images_found_elsewhere") == 0
    code, out = _check_data(capsys, root)
    assert code == 0 and "(yolo): OK" in out


def test_parent_relative_entry_that_exists_nowhere_names_both_places(tmp_path) -> None:
    (tmp_path / "data.yaml").write_text("train: ../train/images\nnames: [a]\n")
    with pytest.raises(DataError, match=r"entry 'train': ../train/images is neither at .* nor at"):
        load_dataset(tmp_path)


# ---- CVAT -----------------------------------------------------------------------------------


def test_cvat_coco_default_subset_with_images_in_images_default(tmp_path, capsys, caplog) -> None:
    root = tmp_path / "task_pets-coco"
    names = ["frame_000000.png", "frame_000001.png"]
    for name in names:
        _image(root / "images" / "default" / name)
    categories = [{"id": 1, "name": "cat", "supercategory": ""}, {"id": 2, "name": "dog", "supercategory": ""}]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(
        json.dumps(_coco_doc(names, categories, first_id=1))
    )
    with caplog.at_level(logging.WARNING, logger="efficientdet.data"):
        data = load_dataset(root)
    _assert_boxes(data, 2)
    assert data.issues.count("split_substituted") == 1
    found = data.issues.examples["images_found_elsewhere"][0]
    assert f"all are in {root / 'images' / 'default'}, which is used" in found
    assert "train: {annotations: annotations/instances_default.json, images: images/default}" in found
    assert any("which is used" in r.getMessage() for r in caplog.records)  # logged, not silent
    code, out = _check_data(capsys, root)
    assert code == 0 and "images_found_elsewhere: 1" in out and "images/default}" in out
    with pytest.raises(DataError, match=r"found \['instances_default.json'\], none for split 'val'"):
        load_dataset(root, "val")


@pytest.mark.parametrize("prefix", ["", "data/"], ids=["cvat-2.x", "darknet-data-prefix"])
def test_cvat_yolo_1_1_obj_data(tmp_path, prefix: str, capsys) -> None:
    root = tmp_path / "task_pets-yolo"
    lines = []
    for i in range(3):
        _image(root / "obj_train_data" / f"frame_{i:06d}.jpg")
        (root / "obj_train_data" / f"frame_{i:06d}.txt").write_text(_yolo_lines())
        lines.append(f"{prefix}obj_train_data/frame_{i:06d}.jpg")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "obj.data").write_text(
        f"classes = 2\ntrain = {prefix}train.txt\nnames = {prefix}obj.names\nbackup = backup/\n"
    )
    data = load_dataset(root)
    _assert_boxes(data, 3)
    # Paths written for darknet's working folder are found, and that is said.
    assert data.issues.count("images_found_elsewhere") == (1 if prefix else 0)
    if prefix:
        assert "train.txt:1: 3 listed path(s)" in data.issues.examples["images_found_elsewhere"][0]
    code, out = _check_data(capsys, root)
    assert code == 0 and "(yolo): OK" in out
    with pytest.raises(DataError, match=r"obj.data: no 'val' image list; entries: \['train'\]"):
        load_dataset(root, "val")


def test_cvat_pascal_voc_1_1_default_subset(tmp_path, capsys) -> None:
    root = tmp_path / "task_pets-voc"
    stems = ["frame_000000", "frame_000001"]
    for stem in stems:
        _image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(f"{stem}.jpg"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "default.txt").write_text("\n".join(stems) + "\n")
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\ndog:51,221,255::\n"
    )
    data = load_dataset(root)
    _assert_boxes(data, 2)
    assert "reading default.txt" in data.issues.examples["split_substituted"][0]
    code, out = _check_data(capsys, root)
    assert code == 0 and "split_substituted: 1" in out
    with pytest.raises(DataError, match=r"val.txt: split file not found; available splits: \['default'\]"):
        load_dataset(root, "val")


# ---- Label Studio ---------------------------------------------------------------------------


def test_label_studio_yolo_export(tmp_path, capsys) -> None:
    root = tmp_path / "project-1-at-2026"
    for i in range(2):
        _image(root / "images" / f"a1b2c3{i}-photo{i}.jpg")
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"a1b2c3{i}-photo{i}.txt").write_text(_yolo_lines())
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "notes.json").write_text(json.dumps({
        "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
        "info": {"year": 2026, "version": "1.0", "contributor": "Label Studio"},
    }))
    _assert_boxes(load_dataset(root), 2)
    code, out = _check_data(capsys, root)
    assert code == 0 and "(yolo): OK" in out


# ---- supervision ----------------------------------------------------------------------------


@pytest.fixture
def sv_dataset(tmp_path):
    """A supervision DetectionDataset of three images with the two boxes each."""
    sv = pytest.importorskip("supervision", reason="supervision is not installed")
    import numpy as np

    paths = [str(_image(tmp_path / "src" / f"img{i}.jpg", 40 * i)) for i in range(3)]
    xyxy = np.array([box for _, box in BOXES], dtype=float)
    classes = np.array([cls for cls, _ in BOXES])
    annotations = {p: sv.Detections(xyxy=xyxy, class_id=classes) for p in paths}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sv.DetectionDataset(classes=NAMES, images=paths, annotations=annotations)


def test_supervision_as_yolo(tmp_path, sv_dataset, capsys) -> None:
    root = tmp_path / "yolo"
    sv_dataset.as_yolo(
        images_directory_path=str(root / "images"),
        annotations_directory_path=str(root / "labels"),
        data_yaml_path=str(root / "data.yaml"),
    )
    assert "train" not in (root / "data.yaml").read_text()  # only the class table
    _assert_boxes(load_dataset(root), 3)
    _assert_boxes(load_dataset(root / "data.yaml", "val"), 3)  # no splits: the whole folder
    code, out = _check_data(capsys, root / "data.yaml")
    assert code == 0 and "(yolo): OK" in out


def test_names_only_yaml(tmp_path) -> None:
    root = tmp_path / "flat"
    _image(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text(_yolo_lines())
    (root / "data.yaml").write_text("names:\n- cat\n- dog\n")
    _assert_boxes(load_dataset(root), 1)


def test_supervision_as_pascal_voc(tmp_path, sv_dataset, capsys) -> None:
    for ann, img in (("Annotations", "JPEGImages"), ("annotations", "images")):
        root = tmp_path / f"voc-{img}"
        sv_dataset.as_pascal_voc(
            images_directory_path=str(root / img), annotations_directory_path=str(root / ann)
        )
        assert not (root / "ImageSets").exists()
        _assert_boxes(load_dataset(root), 3)
        code, out = _check_data(capsys, root)
        assert code == 0 and "(voc): OK" in out


def test_supervision_as_coco_images_in_a_sibling_folder(tmp_path, sv_dataset, capsys) -> None:
    root = tmp_path / "coco"
    sv_dataset.as_coco(
        images_directory_path=str(root / "images"),
        annotations_path=str(root / "annotations.json"),
    )
    data = load_dataset(root / "annotations.json")
    _assert_boxes(data, 3)
    assert data.samples[0].image_path.parent == root / "images"
    assert data.issues.count("images_found_elsewhere") == 1
    code, out = _check_data(capsys, root / "annotations.json")
    assert code == 0
    assert "train: {annotations: annotations.json, images: images}" in out


# ---- the COCO download layout and image discovery --------------------------------------------


def _coco_download(root: Path, *image_dirs: str) -> Path:
    names = ["000000000139.jpg", "000000000285.jpg"]
    for folder in image_dirs:
        for name in names:
            _image(root / folder / name)
    categories = [{"id": 17, "name": "cat", "supercategory": "animal"},
                  {"id": 18, "name": "dog", "supercategory": "animal"}]
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_coco_doc(names, categories, first_id=17)))
    return path


@pytest.mark.parametrize("image_dir", ["val2017", "images"])
def test_coco_download_layout_finds_the_images(tmp_path, image_dir: str, capsys) -> None:
    _coco_download(tmp_path, image_dir)
    data = load_dataset(tmp_path, "val")
    _assert_boxes(data, 2)
    assert data.label_to_category_id == [17, 18]
    assert data.samples[0].image_path.parent == tmp_path / image_dir
    code, out = _check_data(capsys, tmp_path, "--split", "val")
    assert code == 0
    line = f"val: {{annotations: annotations/instances_val2017.json, images: {image_dir}}}"
    assert line in out and "which is used" in out
    # The line works: with it in a data file the images are where it says, nothing searched.
    (tmp_path / "data.yaml").write_text(line + "\n")
    stated = load_dataset(tmp_path, "val")
    assert len(stated) == 2 and stated.issues.count("images_found_elsewhere") == 0


def test_ambiguous_or_missing_images_are_reported_not_guessed(tmp_path, capsys) -> None:
    path = _coco_download(tmp_path, "val2017", "images")
    data = load_dataset(path, strict=False)
    assert len(data) == 0 and data.issues.count("missing_image") == 2
    message = data.issues.examples["images_not_located"][0]
    assert "every one is in each of 2 folders" in message and "none is chosen" in message
    assert "val: {annotations: annotations/instances_val2017.json, images: val2017}" in message
    code, out = _check_data(capsys, path)
    assert code == 1 and "images_not_located: 1" in out and "no_images" in out
    # Nothing anywhere: the message lists where it looked.
    empty = _coco_download(tmp_path / "bare")
    bare = load_dataset(empty, strict=False)
    assert "none was found (looked in" in bare.issues.examples["images_not_located"][0]


def test_given_image_folder_is_never_replaced(tmp_path) -> None:
    _coco_download(tmp_path, "val2017")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "data.yaml").write_text(
        "val: {annotations: annotations/instances_val2017.json, images: wrong}\n"
    )
    data = load_dataset(tmp_path, "val", strict=False)
    assert len(data) == 0
    assert "which is not used (images were given)" in data.issues.examples["images_not_located"][0]


# ---- what training and evaluation read ------------------------------------------------------
# The trainer reads load_dataset(data.train, "train") and load_dataset(data.val, "val",
# class_names=<the training classes>); eval reads load_dataset(--data, --split,
# class_names=<the checkpoint's classes>). Those same calls, with the images decoded where
# they were found, stand in for whole train and eval runs (tests/test_train.py and
# tests/test_evaluate.py run those on the demo data).


def _assert_as_training_reads_it(root: Path, n_train: int, n_val: int) -> None:
    train = load_dataset(root, "train")
    _assert_boxes(train, n_train)
    val = load_dataset(root, "val", class_names=train.class_names)
    _assert_boxes(val, n_val)
    for sample in train.samples + val.samples:
        with sample.load_image() as image:
            assert image.size == (W, H), sample.image_path


def test_training_and_eval_read_roboflow_yolo(tmp_path) -> None:
    _assert_as_training_reads_it(_roboflow_yolo(tmp_path / "rf"), 3, 2)


def test_training_and_eval_read_cvat_coco_with_found_images(tmp_path) -> None:
    root = tmp_path / "coco"
    names = [f"frame_{i:06d}.png" for i in range(3)]
    for name in names:
        _image(root / "images" / name)
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (root / "annotations").mkdir(parents=True)
    doc = json.dumps(_coco_doc(names, categories, first_id=1))
    (root / "annotations" / "instances_train.json").write_text(doc)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(_coco_doc(names[:2], categories, 1)))
    _assert_as_training_reads_it(root, 3, 2)
    train = load_dataset(root, "train")
    assert train.label_to_category_id == [1, 2]
    assert [s.image_path for s in train.samples] == [root / "images" / n for n in names]
    assert train.issues.count("images_found_elsewhere") == 1
