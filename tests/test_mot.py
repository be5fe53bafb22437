"""MOT Challenge files from a run's records: the line format, frame numbers per sequence,
untracked boxes left out, one file or one per sequence."""

from __future__ import annotations

import json
from pathlib import Path

from efficientdet.inference.mot import mot_line, mot_sequences, write_mot
from efficientdet.inference.records import RECORDS_FILE


def _det(box, score, track_id):
    return {"box": box, "score": score, "label": 0, "category_id": 0, "track_id": track_id}


def _write_records(out: Path, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def _record(index, file_name, detections, **extra):
    return {"index": index, "file_name": file_name, "width": 64, "height": 48, **extra,
            "output": None, "detections": detections, "inputs_sha256": "0"}


def test_mot_line_is_frame_id_left_top_width_height_conf_and_three_minus_ones():
    assert mot_line(3, 0, [10.0, 20.5, 40.25, 60.0], 0.875) == (
        "3,1,10.00,20.50,30.25,39.50,0.87500,-1,-1,-1"
    )


def test_a_video_and_a_folder_of_frames_are_two_sequences(tmp_path):
    _write_records(tmp_path / "run", [
        _record(0, "clips/walk.mp4", [_det([0, 0, 10, 10], 0.9, 0), _det([5, 5, 9, 9], 0.2, None)], frame=0),
        _record(0, "clips/walk.mp4", [_det([1, 0, 11, 10], 0.8, 0)], frame=1),
        _record(0, "clips/walk.mp4", [], frame=3),  # a stream's dropped frame 2 leaves a gap
        _record(0, "clips/walk.mp4", [_det([3, 0, 13, 10], 0.7, 4)], frame=4),
        _record(1, "shots/day1/a.png", [_det([0, 0, 2, 2], 0.5, 1)]),
        _record(2, "shots/day1/b.png", []),
        _record(3, "shots/day1/c.png", [_det([1, 1, 3, 3], 0.6, 1)]),
    ])
    sequences = list(mot_sequences(tmp_path / "run"))
    assert [(s.name, s.frames) for s in sequences] == [("walk", 4), ("day1", 3)]
    assert sequences[0].lines == [
        "1,1,0.00,0.00,10.00,10.00,0.90000,-1,-1,-1",
        "2,1,1.00,0.00,10.00,10.00,0.80000,-1,-1,-1",
        "5,5,3.00,0.00,10.00,10.00,0.70000,-1,-1,-1",
    ]
    assert sequences[1].lines == [
        "1,2,0.00,0.00,2.00,2.00,0.50000,-1,-1,-1",
        "3,2,1.00,1.00,2.00,2.00,0.60000,-1,-1,-1",
    ]
    written = write_mot(tmp_path / "run", tmp_path / "mot")
    assert written == [tmp_path / "mot" / "walk.txt", tmp_path / "mot" / "day1.txt"]
    assert written[1].read_text() == "\n".join(sequences[1].lines) + "\n"
    # Several sequences and a .txt name: one file each in the folder of that name.
    assert write_mot(tmp_path / "run", tmp_path / "tracks.txt") == [
        tmp_path / "tracks" / "walk.txt", tmp_path / "tracks" / "day1.txt"
    ]


def test_one_sequence_goes_to_the_txt_file_and_same_names_get_a_suffix(tmp_path):
    _write_records(tmp_path / "one", [_record(0, "v.mp4", [_det([0, 0, 4, 4], 1.0, 2)], frame=0)])
    assert write_mot(tmp_path / "one", tmp_path / "v.txt") == [tmp_path / "v.txt"]
    assert (tmp_path / "v.txt").read_text() == "1,3,0.00,0.00,4.00,4.00,1.00000,-1,-1,-1\n"
    _write_records(tmp_path / "two", [
        _record(0, "a/v.mp4", [], frame=0), _record(1, "b/v.mp4", [], frame=0),
    ])
    assert [p.name for p in write_mot(tmp_path / "two", tmp_path / "out")] == ["v.txt", "v_1.txt"]
    _write_records(tmp_path / "none", [])
    assert write_mot(tmp_path / "none", tmp_path / "empty.txt") == [tmp_path / "empty.txt"]
    assert (tmp_path / "empty.txt").read_text() == ""
