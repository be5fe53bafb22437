"""Tracking: the tracker wrapper keeps the detector's order, ids stay with their objects on a
generated clip through ``run_prediction`` (video and folder of frames) and ``track()``, and
the records, pictures and options say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("trackers", reason="the track extra (trackers) is not installed")

from clips import COLOURS, clip_frame, colour_detector, square_positions, write_clip  # noqa: E402
from efficientdet import Tracker, track  # noqa: E402
from efficientdet.inference.counting import parse_line  # noqa: E402
from efficientdet.inference.predict import iter_sources, run_prediction  # noqa: E402
from efficientdet.inference.track_session import TrackingConfig  # noqa: E402
from efficientdet.inference.tracking import NO_TRACK, TrackerOptions  # noqa: E402
from efficientdet.inference.visualize_tracks import color_for_track  # noqa: E402


def _detection(boxes: list[list[float]], scores: list[float] | None = None) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores if scores is not None else [0.9] * len(boxes)),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
    }


@pytest.mark.parametrize("name", ["bytetrack", "sort", "ocsort"])
def test_ids_follow_the_boxes_whatever_order_the_detector_gives_them(name):
    tracker = Tracker(TrackerOptions(name, min_frames=1))
    a, b = [10.0, 10.0, 40.0, 40.0], [100.0, 60.0, 130.0, 90.0]
    ids_of_a, ids_of_b = set(), set()
    for frame in range(8):
        moved_a = [v + 3 * frame for v in a]
        moved_b = [b[0] - 3 * frame, b[1], b[2] - 3 * frame, b[3]]
        swap = frame % 2 == 1  # the detector lists them in another order every other frame
        boxes = [moved_b, moved_a] if swap else [moved_a, moved_b]
        ids = tracker.update(_detection(boxes))["track_ids"].tolist()
        id_b, id_a = ids if swap else ids[::-1]
        ids_of_a.add(id_a)
        ids_of_b.add(id_b)
    ids_of_a.discard(NO_TRACK)
    ids_of_b.discard(NO_TRACK)
    assert len(ids_of_a) == 1 and len(ids_of_b) == 1 and ids_of_a != ids_of_b


def test_a_box_no_track_holds_gets_no_track_and_reset_starts_ids_again():
    tracker = Tracker("bytetrack")  # a new track needs 2 frames in a row
    first = tracker.update(_detection([[0, 0, 20, 20]]))
    assert first["track_ids"].tolist() == [NO_TRACK]
    assert tracker.update(_detection([[1, 0, 21, 20]]))["track_ids"].tolist() == [0]
    tracker.update(_detection([[2, 0, 22, 20], [60, 60, 80, 80]]))
    tracker.reset()
    tracker.update(_detection([[60, 60, 80, 80]]))
    assert tracker.update(_detection([[61, 60, 81, 80]]))["track_ids"].tolist() == [0]
    assert tracker.update(_detection([]))["track_ids"].shape == (0,)


def test_tracker_options_refuse_what_a_tracker_does_not_have():
    with pytest.raises(ValueError, match="'kalman' is not one of 'bytetrack', 'sort', 'ocsort'"):
        TrackerOptions("kalman")
    with pytest.raises(ValueError, match="the ocsort tracker has no activation threshold"):
        TrackerOptions("ocsort", activation_threshold=0.5)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        TrackerOptions("sort", iou_threshold=1.5)
    options = TrackerOptions("bytetrack", activation_threshold=0.4, lost_buffer=10)
    assert options.arguments({}) == {"track_activation_threshold": 0.4, "lost_track_buffer": 10}
    # Defaults fill what is not set; what is set wins.
    defaults = {"bytetrack": {"high_threshold": 0.5, "activation_threshold": 0.6}, "sort": {"min_frames": 3}}
    assert options.arguments(defaults) == {
        "high_conf_det_threshold": 0.5, "track_activation_threshold": 0.4, "lost_track_buffer": 10,
    }


def test_library_defaults_are_what_the_trackers_library_builds_with():
    from efficientdet.inference.tracking import library_defaults

    own = library_defaults("ocsort")
    assert set(own) == {"high_threshold", "iou_threshold", "lost_buffer", "min_frames"}
    built = Tracker(TrackerOptions("ocsort"), defaults={})._tracker
    assert built.high_conf_det_threshold == own["high_threshold"]
    assert built.minimum_iou_threshold == own["iou_threshold"]
    assert built.minimum_consecutive_frames == own["min_frames"]
    assert "activation_threshold" in library_defaults("bytetrack")


def _ids_by_colour(records: list[dict]) -> dict[int, list[int | None]]:
    """label (colour) -> the track id of its box in each record where it shows."""
    found: dict[int, list[int | None]] = {label: [] for label in range(len(COLOURS))}
    for record in records:
        for det in record["detections"]:
            found[det["label"]].append(det["track_id"])
    return found


def _assert_one_id_per_object(records: list[dict]) -> None:
    ids = _ids_by_colour(records)
    for label, seen in ids.items():
        assert seen[0] is None, "a track is confirmed on its second frame"
        assert len(set(seen[1:])) == 1 and seen[1] is not None, (label, seen)
    assert len({seen[1] for seen in ids.values()}) == len(COLOURS)


def test_video_track_ids_stay_with_their_objects_and_the_mot_file_says_so(tmp_path):
    av = pytest.importorskip("av")
    write_clip(av, tmp_path / "clip.mp4")
    report = run_prediction(
        colour_detector, [tmp_path / "clip.mp4"], tmp_path / "out", progress=False,
        tracking=TrackingConfig(), mot=tmp_path / "tracks.txt",
    )
    assert report.ok and report.frames == 30 and report.mot_paths == [tmp_path / "tracks.txt"]
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").open()]
    assert [r["frame"] for r in records] == list(range(30))
    _assert_one_id_per_object(records)
    lines = (tmp_path / "tracks.txt").read_text().splitlines()
    tracked = [(r["frame"], d) for r in records for d in r["detections"] if d["track_id"] is not None]
    assert len(lines) == len(tracked)
    frame, det = tracked[0]
    x1, y1, x2, y2 = det["box"]
    assert lines[0] == (
        f"{frame + 1},{det['track_id'] + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
        f"{det['score']:.5f},-1,-1,-1"
    )


def test_a_folder_of_frames_is_one_sequence_and_pictures_show_ids_in_their_colours(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        Image.fromarray(clip_frame(i)).save(frames / f"{i:04d}.png")
    report = run_prediction(
        colour_detector, iter_sources([frames]), tmp_path / "out", progress=False, batch_size=5,
        tracking=TrackingConfig(trail=0), mot=tmp_path / "mot",
    )
    assert report.images == 12 and report.mot_paths == [tmp_path / "mot" / "frames.txt"]
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").open()]
    assert all("frame" not in r for r in records)  # still images: resume treats them so
    ids = _ids_by_colour(records)
    assert len(set(ids[0][1:])) == 1 and len(set(ids[1][1:])) == 1 and ids[0][1] != ids[1][1]
    last = records[-1]
    picture = Image.open(tmp_path / "out" / last["output"]).convert("RGB")
    assert {d["track_id"] is None for d in last["detections"]} == {True, False}
    for det in last["detections"]:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        # a tracked box's outline is drawn in the colour of its id, an untracked one not at
        # all; the square inside is untouched
        left_edge = picture.getpixel((x1, (y1 + y2) // 2))
        if det["track_id"] is None:
            assert left_edge == COLOURS[det["label"]]
        else:
            assert left_edge == color_for_track(det["track_id"])
        assert picture.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == COLOURS[det["label"]]


def test_track_yields_tracked_frames_with_counts_from_an_iterable(tmp_path):
    frames = [Image.fromarray(clip_frame(i)) for i in range(30)]
    line = parse_line("80,0,80,120")  # red crosses it going right, blue going left
    seen = list(track(colour_detector, frames, lines=[line], draw=True))
    assert [f.index for f in seen] == list(range(30))
    assert all(f.picture is not None and f.picture.size == f.image.size for f in seen)
    last = seen[-1]
    assert last.counts is not None
    assert (last.counts["lines"][0]["in"], last.counts["lines"][0]["out"]) == (1, 1)
    positions = square_positions(29)
    ids = dict(zip(last.detection["labels"].tolist(), last.detection["track_ids"].tolist(), strict=True))
    assert set(ids) == set(positions) == {0, 1}  # green has left
    assert len(set(ids.values())) == len(ids) and NO_TRACK not in ids.values()


def test_track_reads_a_video_file(tmp_path):
    av = pytest.importorskip("av")
    write_clip(av, tmp_path / "clip.mp4", frames=10)
    seen = list(track(colour_detector, tmp_path / "clip.mp4", tracker="sort"))
    assert len(seen) == 10 and all(f.time is None for f in seen)
    assert seen[-1].detection["track_ids"].tolist() != [NO_TRACK] * len(seen[-1].detection["boxes"])


def test_records_without_tracking_have_no_track_id(tmp_path):
    Image.fromarray(clip_frame(0)).save(tmp_path / "a.png")
    run_prediction(colour_detector, [tmp_path / "a.png"], tmp_path / "out", progress=False)
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert record["detections"] and all("track_id" not in d for d in record["detections"])
    with pytest.raises(ValueError, match="mot needs tracking"):
        run_prediction(colour_detector, [tmp_path / "a.png"], tmp_path / "o2", mot=Path("x.txt"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import efficientdet as ed

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    model = ed.create_model("efficientdet_test", num_classes=3)
    return ed.save_checkpoint(model, path, metadata={"class_names": ["a", "b", "c"]})


def test_cli_predict_track_writes_ids_counts_and_the_mot_file(tmp_path, tiny_checkpoint, monkeypatch):
    from efficientdet.cli.main import main
    from efficientdet.inference.records import read_records

    av = pytest.importorskip("av")
    write_clip(av, tmp_path / "clip.mp4", frames=6)
    monkeypatch.chdir(tmp_path)
    status = main([
        "predict", "clip.mp4", "--out", "out", "--weights", str(tiny_checkpoint), "--track",
        "--tracker", "sort", "--track-activation", "0.0", "--score-threshold", "0.0",
        "--max-detections", "3", "--mot", "tracks.txt", "--count-line", "80,0,80,120",
        "--zone", "0,0,80,0,80,120,0,120", "--quiet",
    ])
    assert status == 0
    records = list(read_records(tmp_path / "out"))
    assert [r["frame"] for r in records] == list(range(6))
    assert all(len(r["detections"]) == 3 for r in records)
    assert all(set(r["counts"]) == {"lines", "zones"} for r in records)
    # The untrained network's boxes (scores ~0.01) wander; some are tracked (SORT: from the
    # third frame a box is matched in), every one says whether it is.
    tracked = [d for r in records for d in r["detections"] if d["track_id"] is not None]
    assert all("track_id" in d for r in records for d in r["detections"]) and tracked
    lines = (tmp_path / "tracks.txt").read_text().splitlines()
    assert len(lines) == len(tracked)
    stored = json.loads((tmp_path / "out" / "predict_args.json").read_text())
    assert stored["track"] and stored["tracker"] == "sort" and stored["mot"] == "tracks.txt"
    assert (tmp_path / "out" / "clip.mp4").is_file()


def test_cli_refuses_a_threshold_the_tracker_does_not_have(tmp_path, tiny_checkpoint, capsys):
    from efficientdet.cli.main import main

    Image.fromarray(clip_frame(0)).save(tmp_path / "a.png")
    status = main([
        "predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--weights",
        str(tiny_checkpoint), "--tracker", "ocsort", "--track-activation", "0.5", "--track",
    ])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "efficientdet predict: error: the ocsort tracker has no activation threshold"
    )


def test_a_resumed_folder_of_frames_continues_after_the_ids_it_wrote(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        Image.fromarray(clip_frame(i)).save(frames / f"{i:04d}.png")
    out = tmp_path / "out"
    run_prediction(colour_detector, iter_sources([frames]), out, progress=False,
                   tracking=TrackingConfig(), pictures=False)
    records = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(records[:6]))  # killed after 6 frames
    before = {d["track_id"] for line in records[:6] for d in json.loads(line)["detections"]} - {None}
    report = run_prediction(colour_detector, iter_sources([frames]), out, progress=False,
                            tracking=TrackingConfig(), pictures=False, resume=True)
    assert report.resumed == 6 and report.images == 6
    after = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()[6:]]
    new_ids = {d["track_id"] for r in after for d in r["detections"]} - {None}
    assert before == {0, 1} and new_ids and min(new_ids) > max(before)
