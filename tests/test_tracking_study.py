"""The tracking benchmark's plumbing (benchmarks/tracking_scenes.py, tracking_study.py):
its ground truth is what TrackEval reads, a tracker that returns the ground truth scores
perfectly, and one that swaps two ids halfway is charged for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trackeval", reason="the track-bench extra (trackeval) is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from efficientdet.inference.mot import mot_line  # noqa: E402
from tracking_scenes import MIN_VISIBLE, SIZE, make_sequence  # noqa: E402
from tracking_study import evaluate  # noqa: E402


def _as_tracker(gt: list[str], swap_from: int | None = None) -> list[str]:
    """The ground truth's counted boxes as a tracker's MOT lines; ids 1 and 2 swapped from
    frame ``swap_from`` on."""
    lines = []
    for line in gt:
        frame, track, x, y, w, h, flag, _, _ = line.split(",")
        if flag == "0":
            continue
        track_id = int(track) - 1
        if swap_from is not None and int(frame) >= swap_from and track_id in (0, 1):
            track_id = 1 - track_id
        box = [float(x), float(y), float(x) + float(w), float(y) + float(h)]
        lines.append(mot_line(int(frame), track_id, box, 0.9))
    return lines


def test_ground_truth_is_read_by_trackeval_and_scores_a_perfect_and_a_swapping_tracker(tmp_path):
    sequence = make_sequence("crossing", 0, 12)
    assert len(sequence.frames) == 12 and sequence.frames[0].shape == (SIZE[1], SIZE[0], 3)
    fields = [line.split(",") for line in sequence.gt]
    assert all(len(f) == 9 and 1 <= int(f[0]) <= 12 for f in fields)
    # Boxes inside the image; the ignore flag follows the visible share.
    assert all(int(f[2]) >= 0 and int(f[2]) + int(f[4]) <= SIZE[0] for f in fields)
    assert all((f[6] == "1") == (float(f[8]) >= MIN_VISIBLE) for f in fields)
    sequence.write(tmp_path / "gt")
    for name, lines in (("perfect", _as_tracker(sequence.gt)), ("swap", _as_tracker(sequence.gt, 7))):
        folder = tmp_path / "trackers" / name / "data"
        folder.mkdir(parents=True)
        (folder / f"{sequence.name}.txt").write_text("".join(line + "\n" for line in lines))
    scores = evaluate(tmp_path, [sequence], ["perfect", "swap"])
    perfect, swap = scores["perfect"], scores["swap"]
    assert perfect["HOTA"] == pytest.approx(1.0) and perfect["MOTA"] == pytest.approx(1.0)
    assert perfect["IDF1"] == pytest.approx(1.0) and perfect["IDSW"] == 0
    assert swap["IDSW"] == 2 and swap["IDF1"] < 1.0 and swap["AssA"] < 1.0
    assert swap["DetA"] == pytest.approx(1.0)  # the same boxes, only the ids differ
