"""Bad image files: reading, the predict and eval commands, and the training data path.

tests/test_preprocess.py checks each conversion rule of ``load_image``; here the whole
corpus goes through every entry point, and each failure must name the file and the problem
while the good files still come out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from itertools import zip_longest
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet.data import (
    DataError,
    DetectionDataset,
    EvalTransform,
    build_dataloader,
    check_dataset,
)
from efficientdet.data.sample import DetectionSample
from efficientdet.detection.transform import ImageReadError, load_image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _deny_reading(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make opening the file called ``name`` fail as a permission problem does (root reads all)."""
    real_open = Image.open

    def guarded(fp, *args, **kwargs):
        if isinstance(fp, (str, Path)) and Path(fp).name == name:
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded)


def _samples(corpus, names: list[str]) -> list[DetectionSample]:
    samples = []
    for image_id, name in enumerate(names, start=1):
        width, height = corpus.good.get(name, (64, 64))
        box = [[0.0, 0.0, max(1.0, width / 2), max(1.0, height / 2)]]
        samples.append(DetectionSample(corpus.folder / name, image_id, (height, width), box, [0]))
    return samples


# ---- load_image over the corpus --------------------------------------------------------------


def test_load_image_reads_the_good_files_upright_and_names_each_bad_one(image_corpus) -> None:
    for name, size in image_corpus.good.items():
        image = load_image(image_corpus.folder / name)
        assert image.mode == "RGB" and image.size == size, name
    for name, fragment in image_corpus.bad.items():
        path = image_corpus.folder / name
        with pytest.raises(ImageReadError) as info:
            load_image(path)
        assert info.value.source == str(path)
        assert fragment in info.value.reason, (name, info.value.reason)
        assert str(path) in str(info.value)


def test_real_decompression_bomb_is_refused_without_decoding(image_corpus) -> None:
    """The crafted header announces 3.6 billion pixels; the refusal says how to allow it."""
    path = image_corpus.folder / "bomb.png"
    assert path.stat().st_size < 200
    with pytest.raises(ImageReadError, match=r"bomb\.png: image is too large.*MAX_IMAGE_PIXELS"):
        load_image(path)


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_permissions(tmp_path, image_corpus) -> None:
    path = tmp_path / "locked.jpg"
    shutil.copy(image_corpus.folder / "rgb.jpg", path)
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match=r"locked\.jpg: cannot be read \(permission denied\)"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(tmp_path, image_corpus, monkeypatch) -> None:
    path = tmp_path / "locked.jpg"
    shutil.copy(image_corpus.folder / "rgb.jpg", path)
    _deny_reading(monkeypatch, "locked.jpg")
    with pytest.raises(ImageReadError, match=r"locked\.jpg: cannot be read \(permission denied\)"):
        load_image(path)


# ---- efficientdet predict --------------------------------------------------------------------


def test_predict_folder_reports_each_bad_file_and_writes_the_rest(
    cli, tiny_weights, image_corpus, tmp_path
) -> None:
    out = tmp_path / "out"
    status, stdout, stderr = cli(
        "predict", "--weights", tiny_weights, image_corpus.folder, "--out", out, "--quiet",
        "--all-scores",
    )
    assert status == 1, stderr
    good, bad = image_corpus.good, image_corpus.bad
    assert f"{len(good)} images" in stdout and f"{len(bad)} failures" in stdout
    failed = [line for line in stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == len(bad)
    for name, fragment in bad.items():
        line = next(line for line in failed if f"{name}:" in line)
        assert str(image_corpus.folder / name) in line and fragment in line, line
    # One annotated picture per good input, upright, still images only (GIF -> first frame).
    for name, size in good.items():
        suffix = ".jpg" if Path(name).suffix == ".jpg" else ".png"
        written = out / (Path(name).stem + suffix)
        with Image.open(written) as picture:
            assert picture.size == size, name
            assert getattr(picture, "n_frames", 1) == 1
    # One record per good image, each with its upright size; none for the bad ones.
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(Path(r["file_name"]).name for r in records) == sorted(good)
    for record in records:
        name = Path(record["file_name"]).name
        assert (record["width"], record["height"]) == good[name], name
        assert record["detections"], name  # --all-scores: the random weights' boxes too
    # The COCO file holds every recorded detection, of the good images only.
    detections = json.loads((out / "predictions.json").read_text())
    assert len(detections) == sum(len(r["detections"]) for r in records)
    assert {Path(d["file_name"]).name for d in detections} == set(good)


def test_predict_only_good_files_exits_zero(cli, tiny_weights, image_corpus, tmp_path) -> None:
    sources = [image_corpus.folder / name for name in ("cmyk.jpg", "sixteen_bit.png", "one_pixel.png")]
    status, stdout, stderr = cli(
        "predict", "--weights", tiny_weights, *sources, "--out", tmp_path / "out", "--quiet"
    )
    assert status == 0, stderr
    assert "3 images" in stdout and "0 failures" in stdout


def test_predict_permission_denied_and_missing_files_are_failures(
    cli, tiny_weights, image_corpus, tmp_path, monkeypatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(image_corpus.folder / "rgb.jpg", folder / "fine.jpg")
    shutil.copy(image_corpus.folder / "rgb.jpg", folder / "locked.jpg")
    _deny_reading(monkeypatch, "locked.jpg")
    status, stdout, stderr = cli(
        "predict", "--weights", tiny_weights, folder, folder / "gone.png", "--out",
        tmp_path / "out", "--quiet",
    )
    assert status == 1
    assert "1 images" in stdout and "2 failures" in stdout
    assert f"failed: {folder / 'locked.jpg'}: cannot be read (permission denied)" in stderr
    assert f"failed: {folder / 'gone.png'}: no such file" in stderr
    assert (tmp_path / "out" / "fine.jpg").is_file()


def test_predict_output_pictures_that_cannot_be_written_are_failures(
    cli, tiny_weights, image_corpus, tmp_path, monkeypatch
) -> None:
    """Writing pictures fails (a read-only or full output disk): reported, JSON still written."""

    def refuse(self, fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image.Image, "save", refuse)
    out = tmp_path / "out"
    status, stdout, stderr = cli(
        "predict", "--weights", tiny_weights, image_corpus.folder / "rgb.jpg", "--out", out,
        "--quiet", "--all-scores",
    )
    assert status == 1
    assert f"could not write {out / 'rgb.jpg'}" in stderr and "Permission denied" in stderr
    # The image's record says it has no picture; its detections still reach the COCO file.
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert record["output"] is None and record["detections"]
    detections = json.loads((out / "predictions.json").read_text())
    assert len(detections) == len(record["detections"])
    assert {d["file_name"] for d in detections} == {record["file_name"]}


def test_predictions_file_that_cannot_be_written_leaves_no_partial_file(
    cli, tiny_weights, image_corpus, tmp_path, monkeypatch
) -> None:
    import efficientdet.inference.records as records_module

    def disk_full(obj, fp, *args, **kwargs):
        fp.write("[")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records_module.json, "dump", disk_full)
    out = tmp_path / "out"
    # predictions.json is written detection by detection: --all-scores makes sure there are some.
    status, _, stderr = cli(
        "predict", "--weights", tiny_weights, image_corpus.folder / "gray.png", "--out", out,
        "--quiet", "--all-scores",
    )
    assert status == 2 and "No space left on device" in stderr
    assert not (out / "predictions.json").exists()
    assert not list(out.glob("*.partial"))


# ---- the training data path ------------------------------------------------------------------


def test_dataset_raise_policy_names_the_file(image_corpus) -> None:
    names = sorted(image_corpus.bad)
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(64))
    for index, name in enumerate(names):
        with pytest.raises(DataError, match=rf"{name}: cannot read image"):
            dataset[index]


def test_dataset_substitute_policy_goes_on_with_the_next_readable_image(
    image_corpus, caplog
) -> None:
    pairs = zip_longest(sorted(image_corpus.good), sorted(image_corpus.bad))
    names = [name for pair in pairs for name in pair if name is not None]  # good, bad, ...
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(64), on_unreadable="substitute")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a second epoch re-reads nothing known to be bad and logs nothing new
            for index in range(len(dataset)):
                image, target = dataset[(index, 7)]
                assert image.shape == (3, 64, 64) and torch.isfinite(image).all()
                assert names[target["image_id"] - 1] in image_corpus.good
    bad_indices = {i for i, name in enumerate(names) if name in image_corpus.bad}
    assert set(dataset.unreadable) == bad_indices
    for index in bad_indices:
        assert names[index] in dataset.unreadable[index]
    warned = [r.getMessage() for r in caplog.records if "next readable image" in r.getMessage()]
    assert len(warned) == len(bad_indices)
    # A substituted item is exactly the next readable sample's item (same augmentation seed rule).
    first_bad = min(bad_indices)
    following = next(i for i in range(first_bad + 1, len(names)) if i not in bad_indices)
    assert dataset[first_bad][1]["image_id"] == dataset[following][1]["image_id"]


def test_dataset_substitute_policy_in_loader_workers(image_corpus) -> None:
    """The dataset goes to a worker process; substitution happens there, batches stay full."""
    names = sorted(image_corpus.good)[:3] + sorted(image_corpus.bad)[:3]
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(32), on_unreadable="substitute")
    loader = build_dataloader(dataset, batch_size=2, shuffle=True, num_workers=1, seed=0, device="cpu")
    batches = list(loader)
    assert [images.shape[0] for images, _ in batches] == [2, 2, 2]
    ids = [target["image_id"] for _, targets in batches for target in targets]
    assert all(names[image_id - 1] in image_corpus.good for image_id in ids)


def test_unreadable_files_found_in_workers_reach_the_main_process(image_corpus, caplog) -> None:
    """Workers log an unreadable file and substitute; the main process learns of it from the
    batch's targets, so the next epoch's workers (copies of its dataset) know it already."""
    names = sorted(image_corpus.good)[:3] + sorted(image_corpus.bad)[:2]
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(32), on_unreadable="substitute")
    bad = {i for i, name in enumerate(names) if name in image_corpus.bad}
    for _epoch in range(2):
        loader = build_dataloader(dataset, batch_size=5, shuffle=False, num_workers=1, seed=0, device="cpu")
        for _, targets in loader:
            replaced = {index for t in targets for index, _ in t.get("replaced", ())}
            assert replaced == bad
            dataset.note_replaced(targets)
        assert set(dataset.unreadable) == bad  # learnt in the main process
    # Two unreadable files in a row: the item that meets both reports both.
    run = DetectionDataset(
        _samples(image_corpus, [names[3], names[4], names[0]]), EvalTransform(32),
        on_unreadable="substitute",
    )
    _, target = run[0]
    assert [index for index, _ in target["replaced"]] == [0, 1]
    # In the main process a known file is substituted without a new warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dataset[min(bad)]
    assert not [r for r in caplog.records if "next readable image" in r.getMessage()]


def test_dataset_substitute_policy_with_nothing_readable_raises(image_corpus) -> None:
    names = sorted(image_corpus.bad)
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(64), on_unreadable="substitute")
    with pytest.raises(DataError, match=rf"none of the {len(names)} images can be read"):
        dataset[0]


def test_dataset_blank_policy_flags_the_item(image_corpus) -> None:
    names = ["rgb.jpg", "truncated.png", "bomb.png", "gray.png"]
    dataset = DetectionDataset(_samples(image_corpus, names), EvalTransform(64), on_unreadable="blank")
    flags = [dataset[i][1].get("unreadable") for i in range(len(names))]
    assert flags[0] is None and flags[3] is None
    assert "truncated.png: cannot read image" in flags[1]
    assert "bomb.png: cannot read image" in flags[2]
    with pytest.raises(ValueError, match="on_unreadable='skip' is not one of"):
        DetectionDataset([], EvalTransform(64), on_unreadable="skip")


def test_dataset_permission_denied_simulated(image_corpus, tmp_path, monkeypatch) -> None:
    path = tmp_path / "locked.png"
    shutil.copy(image_corpus.folder / "gray.png", path)
    _deny_reading(monkeypatch, "locked.png")
    sample = DetectionSample(path, 1, (20, 30), [[0, 0, 10, 10]], [0])
    with pytest.raises(DataError, match=r"locked\.png: cannot read image: .*Permission denied"):
        DetectionDataset([sample], EvalTransform(64))[0]


# ---- check-data and eval over unreadable images ----------------------------------------------


def test_check_data_counts_and_names_unreadable_images(cli, image_corpus, tmp_path, coco_over) -> None:
    folder = tmp_path / "data"
    shutil.copytree(image_corpus.folder, folder)
    annotations = coco_over(folder)
    status, stdout, _ = cli("check-data", "--data", annotations, "--image-size", "128")
    assert status == 0, stdout
    assert "OK, with warnings" in stdout
    assert f"unreadable_image: {len(image_corpus.bad)}" in stdout
    report = check_dataset(annotations)
    messages = "\n".join(report.issues.examples["unreadable_image"])
    for name in image_corpus.bad:
        assert str(folder / name) in messages, name
    assert "decompression bomb" in messages
    images = json.loads(annotations.read_text())["images"]
    bad_ids = [entry["id"] for entry in images if entry["file_name"] in image_corpus.bad]
    assert sorted(report.bad_image_ids) == sorted(bad_ids)


def test_check_data_with_no_readable_image_is_fatal(cli, image_corpus, tmp_path, coco_over) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("truncated.jpg", "notes.png", "bomb.png"):
        shutil.copy(image_corpus.folder / name, folder / name)
    status, stdout, _ = cli("check-data", "--data", coco_over(folder))
    assert status == 1
    assert "FATAL" in stdout and "none of the 3 image(s) can be read" in stdout


def test_eval_leaves_unreadable_images_out_and_exits_one(
    cli, tiny_weights, robust_demo, tmp_path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(robust_demo.root, root)
    doc = json.loads((root / "annotations_val.json").read_text())
    broken = root / doc["images"][1]["file_name"]
    broken.write_bytes(broken.read_bytes()[:100])
    status, stdout, stderr = cli(
        "eval", "--weights", tiny_weights, "--data", root / "data.yaml", "--device", "cpu",
        "--out", tmp_path / "eval",
    )
    assert status == 1, stderr
    assert "AP " in stdout
    assert f"failed: {broken}: cannot read image" in stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(doc["images"]) - 1
    assert len(metrics["unreadable_images"]) == 1 and str(broken) in metrics["unreadable_images"][0]
