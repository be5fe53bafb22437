"""Tests for efficientdet.inference.predict: input discovery, images and videos end to end, failures."""

from __future__ import annotations

import json
import logging
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.inference.predict import (
    FAILURES_FILE,
    PREDICTIONS_FILE,
    RECORDS_FILE,
    LetterboxPredictor,
    PredictionReport,
    collect_sources,
    is_video,
    run_prediction,
)


class FakeDetector:
    """Per image: a confident box over the centre (label 1) and a weak one in a corner (0)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __call__(self, images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
        self.batches.append([im.size for im in images])
        out = []
        for im in images:
            w, h = im.size
            out.append({
                "boxes": torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4], [0, 0, w / 8, h / 8]]),
                "scores": torch.tensor([0.9, 0.1]),
                "labels": torch.tensor([1, 0]),
            })
        return out


def _image(path: Path, size=(64, 48), color=(30, 60, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _read_json(report: PredictionReport) -> list[dict]:
    assert report.predictions_path is not None
    return json.loads(report.predictions_path.read_text())


# --- collect_sources ---------------------------------------------------------------------


def test_collect_sources_folder_is_sorted_non_recursive_and_filtered(tmp_path):
    for name in ["b.png", "a.JPG", "c.mp4", ".hidden.png", "notes.txt", "sub/d.png"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = collect_sources([str(tmp_path)])
    assert [p.name for p in found] == ["a.JPG", "b.png", "c.mp4"]


def test_collect_sources_files_globs_duplicates_and_missing(tmp_path, caplog):
    a = _image(tmp_path / "imgs" / "a.png")
    b = _image(tmp_path / "imgs" / "b.jpg")
    deep = _image(tmp_path / "imgs" / "sub" / "c.png")
    odd = tmp_path / "weird.data"
    odd.write_bytes(b"x")
    patterns = [
        str(b),
        str(tmp_path / "imgs" / "*.png"),
        str(tmp_path / "imgs" / "**" / "*.png"),
        str(odd),
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "nothing" / "*.jpg"),
        str(a),
    ]
    with caplog.at_level(logging.WARNING, logger="efficientdet.inference.predict"):
        found = collect_sources(patterns)
    assert found == [
        b, a, deep, odd, tmp_path / "missing.jpg", tmp_path / "nothing" / "*.jpg",
    ]
    assert "missing.jpg: no such file" in caplog.text
    assert "matches no image" in caplog.text


def test_is_video_by_extension():
    assert is_video("clip.MP4") and is_video(Path("a/b.webm"))
    assert not is_video("photo.jpg")


# --- run_prediction: images ----------------------------------------------------------------


def test_run_prediction_images_with_a_corrupt_one(tmp_path, caplog):
    src = tmp_path / "in"
    _image(src / "one.png", size=(80, 40))
    _image(src / "two.jpg", size=(40, 60))
    _image(src / "three.bmp", size=(20, 20))
    corrupt = src / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG body" * 4)
    sources = collect_sources([str(src)]) + [src / "gone.png"]
    detector = FakeDetector()
    out_dir = tmp_path / "out"

    with caplog.at_level(logging.WARNING, logger="efficientdet.inference.predict"):
        report = run_prediction(
            detector, sources, out_dir, class_names=["bg", "thing"],
            label_to_category_id={0: 5, 1: 7}, batch_size=2, progress=False,
        )

    assert report.images == 3
    assert report.detections == 6
    assert not report.ok
    assert sorted(f.path for f in report.failures) == sorted([str(corrupt), str(src / "gone.png")])
    assert any("not an image" in f.reason or "corrupt" in f.reason for f in report.failures)
    assert "broken.jpg" in caplog.text and "gone.png" in caplog.text
    # Batches of at most 2, only readable images.
    assert [len(b) for b in detector.batches] == [2, 1]
    assert sorted(p.name for p in report.outputs) == ["one.png", "three.png", "two.jpg"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([
        "one.png", PREDICTIONS_FILE, RECORDS_FILE, FAILURES_FILE, "three.png", "two.jpg",
    ])

    records = _read_json(report)
    assert len(records) == 6
    by_file: dict[str, list[dict]] = {}
    for r in records:
        assert set(r) == {"image_id", "file_name", "category_id", "category", "bbox", "score"}
        assert r["category"] == {5: "bg", 7: "thing"}[r["category_id"]]
        by_file.setdefault(Path(r["file_name"]).name, []).append(r)
    assert sorted({r["image_id"] for r in records}) == [1, 2, 3]
    one = sorted(by_file["one.png"], key=lambda r: -r["score"])
    # 80x40: centre box xyxy (20, 10, 60, 30) -> xywh (20, 10, 40, 20); the weak one is kept.
    assert one[0]["bbox"] == [20.0, 10.0, 40.0, 20.0]
    assert one[0]["category_id"] == 7 and one[0]["score"] == pytest.approx(0.9)
    assert one[1]["bbox"] == [0.0, 0.0, 10.0, 5.0] and one[1]["category_id"] == 5


def test_run_prediction_draws_confident_boxes_only(tmp_path):
    src = _image(tmp_path / "pic.png", size=(160, 80), color=(30, 60, 90))
    report = run_prediction(FakeDetector(), [src], tmp_path / "out", progress=False)
    with Image.open(src) as original, Image.open(report.outputs[0]) as annotated:
        before = np.asarray(original.convert("RGB"))
        after = np.asarray(annotated.convert("RGB"))
    changed = np.any(before != after, axis=2)
    assert changed[20:61, 40].any()  # the 0.9 box's left edge at x=40
    assert not changed[60:, :20].any()  # the 0.1 box (0..20, 0..10) is not drawn, no tag there


def test_run_prediction_output_names_do_not_collide(tmp_path):
    a = _image(tmp_path / "a" / "x.jpg")
    b = _image(tmp_path / "b" / "x.jpg")
    c = _image(tmp_path / "c" / "x.jpeg")
    report = run_prediction(FakeDetector(), [a, b, c], tmp_path / "out", progress=False)
    assert [p.name for p in report.outputs] == ["x.jpg", "x_1.jpg", "x_2.jpg"]
    files = {r["file_name"] for r in _read_json(report)}
    assert files == {a.as_posix(), b.as_posix(), c.as_posix()}


def test_run_prediction_without_sources_writes_empty_json(tmp_path):
    report = run_prediction(FakeDetector(), [], tmp_path / "out", progress=False)
    assert report.ok and report.images == 0
    assert _read_json(report) == []


def test_run_prediction_rejects_malformed_predictions(tmp_path):
    src = _image(tmp_path / "p.png")

    def too_few(images):
        return []

    def bad_boxes(images):
        return [{"boxes": torch.zeros(1, 3), "scores": torch.ones(1), "labels": torch.ones(1)}]

    def no_scores(images):
        return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}]

    for fn, message in [(too_few, "0 results for 1"), (bad_boxes, r"\[K, 4\]"),
                        (no_scores, "scores")]:
        with pytest.raises(ValueError, match=message):
            run_prediction(fn, [src], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="label 1 has no entry"):
        run_prediction(FakeDetector(), [src], tmp_path / "out", progress=False,
                       label_to_category_id=[3])
    with pytest.raises(ValueError, match="batch_size"):
        run_prediction(FakeDetector(), [src], tmp_path / "out", batch_size=0)


def test_run_prediction_empty_detections(tmp_path):
    src = _image(tmp_path / "p.png")

    def nothing(images):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]

    report = run_prediction(nothing, [src], tmp_path / "out", progress=False)
    assert report.images == 1 and report.detections == 0 and report.ok
    assert _read_json(report) == []
    assert (tmp_path / "out" / "p.png").is_file()


def test_run_prediction_without_pictures_writes_the_records_only(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.avi"
    _write_video(av, video, frames=3)
    image = _image(tmp_path / "still.png", size=(80, 40))
    out = tmp_path / "out"
    report = run_prediction(FakeDetector(), [image, video], out, batch_size=2, progress=False,
                            pictures=False)
    assert report.ok and (report.images, report.videos, report.frames) == (1, 1, 3)
    assert report.outputs == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PREDICTIONS_FILE, RECORDS_FILE, FAILURES_FILE]
    )
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    assert [(r["index"], r.get("frame"), r["output"]) for r in records] == [
        (0, None, None), (1, 0, None), (1, 1, None), (1, 2, None),
    ]
    # 80x40: the centre box xyxy (20, 10, 60, 30) -> xywh (20, 10, 40, 20), as with pictures.
    coco = [r for r in _read_json(report) if r["file_name"] == image.as_posix()]
    assert sorted(r["bbox"] for r in coco) == [[0.0, 0.0, 10.0, 5.0], [20.0, 10.0, 40.0, 20.0]]


# --- run_prediction: a predictor of letterboxed batches -------------------------------------


def _corner_detector(batches: list[tuple[int, ...]]) -> LetterboxPredictor:
    """Per letterboxed input: one box (8, 8, 40, 24) in input pixels, label 1, score the
    mean of the input's first channel over that box (so it depends on the pixels)."""

    def detect(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        batches.append(tuple(batch.shape))
        return [{
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 24.0]]),
            "scores": x[0, 8:24, 8:40].mean().reshape(1).sigmoid(),
            "labels": torch.tensor([1]),
        } for x in batch]

    return LetterboxPredictor(detect, (64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_letterbox_predictor_gets_batches_and_boxes_come_back_in_image_pixels(tmp_path):
    _image(tmp_path / "in" / "a.png", size=(80, 40), color=(200, 10, 10))
    broken = tmp_path / "in" / "b.png"
    broken.write_bytes(b"not a png at all")
    _image(tmp_path / "in" / "c.png", size=(32, 64), color=(10, 200, 10))
    batches: list[tuple[int, ...]] = []
    out = tmp_path / "out"
    report = run_prediction(_corner_detector(batches), collect_sources([tmp_path / "in"]), out,
                            batch_size=2, progress=False)
    assert batches == [(2, 3, 64, 64)]  # the letterboxed batch, without the broken file
    assert [(f.path, f.reason) for f in report.failures] == [
        (str(broken), "not an image (format not recognised)")
    ]
    failures = [json.loads(line) for line in (out / FAILURES_FILE).read_text().splitlines()]
    assert failures == [{"index": 1, "path": str(broken),
                         "reason": "not an image (format not recognised)"}]
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    assert [(r["index"], r["width"], r["height"], r["output"]) for r in records] == [
        (0, 80, 40, "a.png"), (2, 32, 64, "c.png"),
    ]
    # 80x40 into 64x64: scale 0.8, so (8, 8, 40, 24) / 0.8; 32x64: scale 1.0, clipped to x <= 32.
    assert records[0]["detections"][0]["box"] == [10.0, 10.0, 50.0, 30.0]
    assert records[1]["detections"][0]["box"] == [8.0, 8.0, 32.0, 24.0]


def test_letterbox_predictor_gives_what_it_gives_as_a_function_of_images(tmp_path):
    sources = [_image(tmp_path / "in" / f"{i}.png", size=(50 + 13 * i, 70 - 9 * i),
                      color=(40 * i, 90, 200 - 30 * i)) for i in range(5)]
    batches: list[tuple[int, ...]] = []
    direct = _corner_detector(batches)

    def as_function(images):  # a plain predict_fn: decoded images in, the reader only decodes
        return direct(images)

    run_prediction(direct, sources, tmp_path / "batches", batch_size=2, progress=False)
    run_prediction(as_function, sources, tmp_path / "images", batch_size=2, progress=False)
    assert len(batches) == 6
    for name in (RECORDS_FILE, PREDICTIONS_FILE):
        assert (tmp_path / "batches" / name).read_text() == (tmp_path / "images" / name).read_text()


# --- run_prediction: videos ------------------------------------------------------------------


def _write_video(av, path: Path, frames: int, size=(64, 48), rotation: int | None = None) -> None:
    """Frame i is red with intensity 40 * i on its left half, blue on its right half."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(10))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            image = Image.new("RGB", size, (0, 0, 255))
            image.paste((40 * i, 0, 0), (0, 0, size[0] // 2, size[1]))
            frame = av.VideoFrame.from_image(image)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_run_prediction_video_round_trip(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.avi"
    _write_video(av, video, frames=5)
    image = _image(tmp_path / "still.png")
    detector = FakeDetector()
    report = run_prediction(detector, [image, video], tmp_path / "out", batch_size=2,
                            progress=False)

    assert report.ok, report.failures
    assert (report.images, report.videos, report.frames) == (1, 1, 5)
    assert report.detections == 2 * 6
    # The still image is flushed before the video starts; frames come in batches of 2.
    assert [len(b) for b in detector.batches] == [1, 2, 2, 1]
    out_video = tmp_path / "out" / "clip.mp4"
    assert out_video in report.outputs

    with av.open(str(out_video)) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].size == (64, 48)
    # The 0.9 box outline (x = 16) is drawn in the class-1 colour (green); the frame itself
    # has no green at all. (Chroma subsampling smears a 1-pixel line, so compare loosely.)
    row = np.asarray(decoded[3]).astype(int)[24]
    assert row[16, 1] - row[8, 1] > 60

    records = [r for r in _read_json(report) if r["file_name"] == video.as_posix()]
    assert sorted({r["frame"] for r in records}) == [0, 1, 2, 3, 4]
    assert len({r["image_id"] for r in records}) == 5
    assert all(r["bbox"] in ([16.0, 12.0, 32.0, 24.0], [0.0, 0.0, 8.0, 6.0]) for r in records)


def test_run_prediction_video_is_turned_upright(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "phone.mp4"
    # Display matrix: rotate 90 degrees clockwise (-90 counter-clockwise) to show.
    _write_video(av, video, frames=2, size=(64, 48), rotation=-90)
    seen: list[Image.Image] = []

    def record(images):
        seen.extend(images)
        return FakeDetector()(images)

    report = run_prediction(record, [video], tmp_path / "out", progress=False)
    assert report.ok and report.frames == 2
    assert seen[1].size == (48, 64)
    # Turning clockwise moves the red left half to the top.
    top, bottom = seen[1].getpixel((24, 5)), seen[1].getpixel((24, 58))
    assert top[0] > top[2] and bottom[2] > bottom[0]


def test_run_prediction_corrupt_video_is_reported_and_others_run(tmp_path):
    pytest.importorskip("av")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    good = _image(tmp_path / "good.png")
    report = run_prediction(FakeDetector(), [bad, good, tmp_path / "none.mov"],
                            tmp_path / "out", progress=False)
    assert report.images == 1 and report.videos == 0
    assert [f.path for f in report.failures] == [str(bad), str(tmp_path / "none.mov")]
    assert not (tmp_path / "out" / "bad.mp4").exists()


def test_run_prediction_without_pyav_reports_the_video(tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"whatever")
    good = _image(tmp_path / "good.png")
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    report = run_prediction(FakeDetector(), [video, good], tmp_path / "out", progress=False)
    assert report.images == 1
    assert len(report.failures) == 1 and "pip install av" in report.failures[0].reason


def test_run_prediction_cut_video_keeps_its_first_frames_and_warns(tmp_path, caplog):
    av = pytest.importorskip("av")
    video = tmp_path / "cut.avi"
    rng = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(noise, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="efficientdet.inference.predict"):
        report = run_prediction(FakeDetector(), [video], tmp_path / "out", progress=False)
    assert report.videos == 1 and 0 < report.frames < 10
    assert "may be truncated" in caplog.text
    frames = {r["frame"] for r in _read_json(report)}
    assert frames == set(range(report.frames))


def test_resume_redoes_a_cut_video_and_checks_the_record_before_it(tmp_path):
    av = pytest.importorskip("av")
    first = _image(tmp_path / "first.png")
    video = tmp_path / "clip.avi"
    _write_video(av, video, frames=4)
    last = _image(tmp_path / "last.png")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_prediction(FakeDetector(), [first, video, last], whole, batch_size=2, progress=False)
    run_prediction(FakeDetector(), [first, video, last], cut, batch_size=2, progress=False)
    lines = (cut / RECORDS_FILE).read_text().splitlines(keepends=True)
    (cut / RECORDS_FILE).write_text("".join(lines[:3]))  # the picture and 2 of the 4 frames

    renamed = _image(tmp_path / "renamed.png")
    with pytest.raises(ValueError, match="input 0 was .*first.png in the first run"):
        run_prediction(FakeDetector(), [renamed, video, last], cut, batch_size=2,
                       progress=False, resume=True)
    detector = FakeDetector()
    report = run_prediction(detector, [first, video, last], cut, batch_size=2, progress=False,
                            resume=True)
    assert report.resumed == 1 and (report.frames, report.images) == (4, 1)
    assert [len(b) for b in detector.batches] == [2, 2, 1]  # the whole video again, then last
    assert (cut / RECORDS_FILE).read_text() == (whole / RECORDS_FILE).read_text()
