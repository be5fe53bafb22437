"""How well ``predict --track`` tracks: HOTA, MOTA and IDF1 per tracker and detector score
threshold, with a trained detector, on generated sequences (``tracking_scenes.py``).

    python benchmarks/tracking_study.py --weights runs/lite0-digits.safetensors \\
        --out runs/tracking-study

The detector runs once per frame (the ``LetterboxPredictor`` that ``predict`` uses, scores
down to the lowest threshold studied); each tracker then runs over those detections for each
score threshold, through :class:`efficientdet.Tracker` (the frame rate set to the clips'
25 fps), as ``predict --track`` does: once with the trackers library's own thresholds, once
with those that scored best (HOTA) on separate tuning sequences (:data:`GRID`, all score
thresholds). Its tracks are written with the library's MOT writer and scored against the
ground truth of the test sequences by TrackEval's MOT Challenge evaluation (``pip install 'efficientdet[track-bench]'``): HOTA (averaged over IoU 0.05-0.95),
MOTA and IDF1 at IoU 0.5, and the identity switches. Also timed: the detector per frame, and
each tracker's ``update`` per frame (median over all frames of all sequences, one thread).

Writes ``OUT/gt/<seq>/`` (ground truth), ``OUT/trackers/<tracker>-<threshold>/data/<seq>.txt``,
``OUT/results.json`` and prints the Markdown table of the README.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from efficientdet.deploy.backends import build_predictor
from efficientdet.inference.mot import mot_line
from efficientdet.inference.predictor import Detection
from efficientdet.inference.tracking import (
    TRACKER_NAMES,
    Tracker,
    TrackerOptions,
    library_defaults,
)
from tracking_scenes import KINDS, RATE, Sequence, make_sequences

BENCHMARK = "DIGITS"  # TrackEval's "benchmark-split" names the ground-truth folder
SPLIT = "test"


def detect_all(weights: str, sequences: list[Sequence], lowest: float) -> tuple[list[list[Detection]], float]:
    """Per sequence, per frame, the detections scoring above ``lowest``; and the median
    seconds per frame."""
    from PIL import Image

    predictor = build_predictor(weights, device="cpu", score_threshold=lowest)
    seconds, found = [], []
    for sequence in sequences:
        per_frame = []
        for pixels in sequence.frames:
            start = time.perf_counter()
            (detection,) = predictor.predict_fn([Image.fromarray(pixels)])
            seconds.append(time.perf_counter() - start)
            per_frame.append({k: torch.as_tensor(v) for k, v in detection.items()})
        found.append(per_frame)
    return found, statistics.median(seconds)


def track_all(
    options: TrackerOptions, detections: list[list[Detection]], threshold: float
) -> tuple[list[list[str]], list[float]]:
    """MOT lines per sequence for the tracker ``options`` asks for (unset thresholds: the
    trackers library's defaults) fed the boxes scoring at least ``threshold``, and the
    seconds of each ``update``."""
    seconds: list[float] = []
    files = []
    for frames in detections:
        tracker = Tracker(options, frame_rate=RATE, defaults={})
        lines = []
        for number, detection in enumerate(frames, start=1):
            keep = detection["scores"] >= threshold
            kept = {k: v[keep] for k, v in detection.items()}
            start = time.perf_counter()
            tracked = tracker.update(kept)
            seconds.append(time.perf_counter() - start)
            for box, score, track_id in zip(tracked["boxes"].tolist(), tracked["scores"].tolist(),
                                            tracked["track_ids"].tolist(), strict=True):
                if track_id >= 0:
                    lines.append(mot_line(number, track_id, box, score))
        files.append(lines)
    return files, seconds


def evaluate(out: Path, sequences: list[Sequence], trackers: list[str]) -> dict[str, dict[str, float]]:
    """TrackEval's HOTA, CLEAR and Identity metrics over all sequences, per tracker run."""
    import trackeval

    seqmap = out / "seqmap.txt"
    seqmap.write_text("name\n" + "".join(s.name + "\n" for s in sequences))
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(out / "gt"), "TRACKERS_FOLDER": str(out / "trackers"),
        "BENCHMARK": BENCHMARK, "SPLIT_TO_EVAL": SPLIT, "SEQMAP_FILE": str(seqmap),
        "SKIP_SPLIT_FOL": True, "TRACKERS_TO_EVAL": trackers, "PRINT_CONFIG": False,
    })
    evaluator = trackeval.Evaluator({
        "PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
        "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
        "LOG_ON_ERROR": None,
    })
    metrics = [trackeval.metrics.HOTA({"PRINT_CONFIG": False}),
               trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    results, _ = evaluator.evaluate([dataset], metrics)
    table = {}
    for tracker in trackers:
        combined = results["MotChallenge2DBox"][tracker]["COMBINED_SEQ"]["pedestrian"]
        table[tracker] = {
            "HOTA": float(combined["HOTA"]["HOTA"].mean()),
            "DetA": float(combined["HOTA"]["DetA"].mean()),
            "AssA": float(combined["HOTA"]["AssA"].mean()),
            "MOTA": float(combined["CLEAR"]["MOTA"]),
            "IDF1": float(combined["Identity"]["IDF1"]),
            "IDSW": int(combined["CLEAR"]["IDSW"]),
        }
    return table


# Thresholds tried on the tuning sequences (each grid holds the library's defaults).
GRID: dict[str, list[dict[str, float]]] = {
    "bytetrack": [{"activation_threshold": a, "high_threshold": h}
                  for a in (0.3, 0.5, 0.7) for h in (0.3, 0.45, 0.6)],
    "sort": [{"activation_threshold": a, "iou_threshold": i} for a in (0.25, 0.4, 0.55) for i in (0.1, 0.3)],
    "ocsort": [{"high_threshold": h} for h in (0.2, 0.3, 0.45, 0.6)],
}


def run_all(
    out: Path, sequences: list[Sequence], detections: list[list[Detection]],
    runs: dict[str, tuple[str, dict[str, float] | None, float]],
) -> dict[str, dict[str, Any]]:
    """Track and score each run ``name -> (tracker, thresholds or None for the library's
    defaults, score threshold)``; metrics and median update seconds per run."""
    timing = {}
    for name, (tracker, setting, threshold) in runs.items():
        options = TrackerOptions(tracker, **(setting or {}))
        files, seconds = track_all(options, detections, threshold)
        folder = out / "trackers" / name / "data"
        folder.mkdir(parents=True, exist_ok=True)
        for sequence, lines in zip(sequences, files, strict=True):
            (folder / f"{sequence.name}.txt").write_text("".join(line + "\n" for line in lines))
        timing[name] = statistics.median(seconds)
    with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints each run's name
        scores = evaluate(out, sequences, list(runs))
    return {name: {**scores[name], "update_s": timing[name]} for name in runs}


def tune(out: Path, sequences: list[Sequence], detections: list[list[Detection]],
         thresholds: list[float], trackers: list[str]) -> dict[str, tuple[dict[str, float], float]]:
    """Per tracker, the grid setting and score threshold of the best HOTA."""
    runs = {
        f"tune-{tracker}-{k}-{threshold:g}": (tracker, setting, threshold)
        for tracker in trackers for k, setting in enumerate(GRID[tracker]) for threshold in thresholds
    }
    scores = run_all(out, sequences, detections, runs)
    best = {}
    for tracker in trackers:
        name = max((n for n in runs if runs[n][0] == tracker), key=lambda n: scores[n]["HOTA"])
        best[tracker] = (runs[name][1] or {}, runs[name][2])
    return best


def _setting_text(setting: dict[str, float] | None) -> str:
    if setting is None:
        return "library defaults"
    return ", ".join(f"{k.removesuffix('_threshold')} {v:g}" for k, v in setting.items())


def _table(results: dict[str, Any], thresholds: list[float]) -> str:
    head = " | ".join(f"score >= {t:g}" for t in thresholds)
    rows = [f"| tracker | its thresholds | {head} | update ms/frame |",
            "|---|---|" + "---:|" * len(thresholds) + "---:|"]
    for row in results["rows"]:
        cells = []
        for threshold in thresholds:
            m = results["runs"][row["runs"][f"{threshold:g}"]]
            cells.append(f"{100 * m['HOTA']:.1f} / {100 * m['MOTA']:.1f} / {100 * m['IDF1']:.1f}")
        speed = results["runs"][row["runs"][f"{min(thresholds):g}"]]["update_s"]
        rows.append(f"| {row['tracker']} | {row['setting']} | {' | '.join(cells)} | {1000 * speed:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a trained digits detector (Lite0, 320 px)")
    parser.add_argument("--out", default="runs/tracking-study")
    parser.add_argument("--tune-seeds", type=int, default=1, help="tuning sequences of each kind")
    parser.add_argument("--seeds", type=int, default=3, help="test sequences of each kind")
    parser.add_argument("--frames", type=int, default=60, help="frames per sequence")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--trackers", nargs="+", default=list(TRACKER_NAMES), choices=TRACKER_NAMES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    tuning = make_sequences(KINDS, range(args.tune_seeds), args.frames)
    test = make_sequences(KINDS, range(args.tune_seeds, args.tune_seeds + args.seeds), args.frames)
    for sequence in tuning + test:
        sequence.write(out / "gt")
    found, detect_s = detect_all(args.weights, tuning + test, min(args.thresholds))
    tuning_found, test_found = found[:len(tuning)], found[len(tuning):]
    best = tune(out, tuning, tuning_found, args.thresholds, args.trackers)
    runs: dict[str, tuple[str, dict[str, float] | None, float]] = {}
    rows = []
    for tracker in args.trackers:
        settings: list[tuple[str, dict[str, float] | None]] = [("library", None)]
        own = library_defaults(tracker)
        if best[tracker][0] != {option: own[option] for option in best[tracker][0]}:
            settings.append(("tuned", best[tracker][0]))
        for label, setting in settings:
            names = {f"{t:g}": f"{tracker}-{label}-{t:g}" for t in args.thresholds}
            runs.update({names[f"{t:g}"]: (tracker, setting, t) for t in args.thresholds})
            rows.append({"tracker": tracker, "setting": _setting_text(setting), "runs": names,
                         "tuned_threshold": best[tracker][1] if setting is not None else None})
    results: dict[str, Any] = {
        "detector_s": detect_s, "tuning_sequences": [s.name for s in tuning],
        "test_sequences": [s.name for s in test], "test_frames": sum(len(s.frames) for s in test),
        "detections_per_frame": {
            f"{t:g}": statistics.mean(int((d["scores"] >= t).sum()) for seq in test_found for d in seq)
            for t in args.thresholds
        },
        "rows": rows, "runs": run_all(out, test, test_found, runs),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"test: {results['test_frames']} frames in {len(test)} sequences; tuning: "
          f"{len(tuning)} sequences; detector {1000 * detect_s:.1f} ms/frame (median, 1 thread)")
    print("detections per frame:", results["detections_per_frame"])
    print("tuned (on the tuning sequences):",
          {t: (s, th) for t, (s, th) in best.items()})
    print("cells: HOTA / MOTA / IDF1 (%) on the test sequences")
    print(_table(results, args.thresholds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
