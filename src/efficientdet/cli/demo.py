"""The main job behind ``make demo``: generate the bundled data, train EfficientDet-Lite0 from
the ImageNet Lite0 backbone, evaluate, and write a report with pictures; and the
``efficientdet demo`` command that runs it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset
from ..data.demo import DEMO_DATA_ARGS, prepare_demo_data
from ..detection.detector import Detector
from ..inference.loading import load_trained
from ..inference.visualize import draw_detections, draw_ground_truth, make_grid
from ..train import BEST_WEIGHTS, LAST_WEIGHTS, load_config, train
from ..train.recipes import DEMO_RECIPE
from .options import add_out

log = logging.getLogger(__name__)

NAME = "demo"
HELP = "the main job: train Lite0 on the bundled data and report"


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    metrics: dict[str, float]
    minutes: float


def validation_grid(
    weights: Path, data_yaml: Path, out: Path, *, count: int = 12, score_threshold: float = 0.3
) -> Path:
    """Validation images with ground truth (dashed) and predictions (solid) as one PNG."""
    loaded = load_trained(weights)
    detector = Detector(loaded.model).eval()
    data = load_dataset(data_yaml, "val")
    samples = [s for s in data.samples if s.num_boxes > 0][:count]
    images = [s.load_image() for s in samples]
    with torch.inference_mode():
        detections = detector.predict(images)
    pictures = []
    for sample, image, det in zip(samples, images, detections, strict=True):
        picture = draw_ground_truth(image, sample.boxes, sample.labels, data.class_names, color=(255, 255, 255))
        picture = draw_detections(
            picture, det["boxes"], det["scores"], det["labels"], data.class_names,
            score_threshold=score_threshold,
        )
        pictures.append(picture)
    make_grid(pictures, 4).save(out)
    return out


def write_report(
    out_dir: Path, *, data_args: dict[str, Any], metrics: dict[str, float], per_class: dict[str, float], timings: dict[str, float],
    train_summary: dict[str, Any], recipe: list[str], thresholds: dict[str, Any] | None = None,
) -> Path:
    m = metrics
    best = (thresholds or {}).get("overall", {})
    errors_lines = [
        "## What went wrong",
        "",
        "The full error analysis of the final evaluation is in [eval/report.md](eval/report.md):",
        "per-class precision, recall and F1 at their best score thresholds, precision-recall",
        "curves, the most confused digits and galleries of false positives and missed digits.",
        "",
    ]
    if best.get("threshold") is not None:
        errors_lines += [
            f"At the score threshold with the best F1 over all classes, {best['threshold']:.3f} "
            f"(IoU 0.5): precision {best['precision']:.3f}, recall {best['recall']:.3f}, "
            f"F1 {best['f1']:.3f}.",
            "",
        ]
    errors_lines += ["![confusion matrix](eval/confusion_matrix.png)", ""]
    lines = [
        "# EfficientDet demo: digit scenes",
        "",
        "`tf_efficientdet_lite0` on the bundled digit-scenes data (scikit-learn's handwritten digits",
        "composited on photo crops, 10 classes, "
        f"{data_args['num_train']} training and {data_args['num_val']} validation images of "
        f"{data_args['image_size']} px), evaluated with pycocotools on the validation split. The",
        "ImageNet EfficientNet-Lite0 backbone stays frozen (its features are computed once and",
        "cached); the BiFPN and the class/box heads are trained.",
        "",
        "## Validation metrics (COCO)",
        "",
        "| AP[.5:.95] | AP50 | AP75 | AP small | AP medium | AP large | AR100 |",
        "|---|---|---|---|---|---|---|",
        f"| {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['AP_small']:.3f} | "
        f"{m['AP_medium']:.3f} | {m['AP_large']:.3f} | {m['AR100']:.3f} |",
        "",
        "Per-class AP[.5:.95]: " + ", ".join(f"{k}: {v:.3f}" for k, v in per_class.items()),
        "",
        "![per-class AP](eval/per_class_ap.png)",
        "",
        "## Predictions on validation images",
        "",
        "Solid boxes: predictions (score >= 0.3); dashed white boxes: ground truth.",
        "",
        "![validation grid](val_grid.png)",
        "",
        *errors_lines,
        "## Training",
        "",
        f"- steps: {train_summary['steps']} ({train_summary['epochs']:.1f} epochs), batch "
        f"{train_summary['batch_size']}, status {train_summary['status']}",
        f"- time: data {timings['data']:.0f} s, training (with evaluations) {timings['train']:.0f} s, "
        f"pictures {timings['pictures']:.0f} s, total {timings['total'] / 60:.1f} min",
        f"- machine: {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "![loss](loss.png)",
        "",
        "![learning rate](lr.png)",
        "",
        "![validation mAP](map.png)",
        "",
        "## Configuration",
        "",
        "Resolved configuration: [config.yaml](config.yaml). Recipe overrides:",
        "",
        "```",
        *recipe,
        "```",
        "",
        "Files: `best.safetensors` / `last.safetensors` (EMA weights with class names),",
        "`eval/metrics.json`, `eval/detections.json`, `eval/report.md` (with the confusion matrix,",
        "PR curves, thresholds and error galleries beside it), `steps.csv`, `epochs.csv`.",
        "",
        "Reproduce: `make demo` (or `efficientdet demo --out runs/demo`).",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    data_dir: str | Path = "data/digit-scenes",
    minutes: float = 10.5,
    extra: list[str] | None = None,
    progress: bool = True,
    data_args: dict[str, Any] | None = None,
) -> DemoResult:
    """Generate data, train, evaluate and write ``out_dir/report.md``.

    Args:
        out_dir: run folder (checkpoints, metrics, pictures, report).
        data_dir: where the demo data is written (reused when already there).
        minutes: training time budget; the schedule is fitted to it after a few steps.
        extra: further ``section.key=value`` overrides (e.g. for a quick test).
        data_args: demo-data generator arguments (default :data:`DEMO_DATA_ARGS`).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    for stale in ("state.pt", LAST_WEIGHTS, BEST_WEIGHTS):
        (out / stale).unlink(missing_ok=True)
    data_args = data_args or DEMO_DATA_ARGS
    files = prepare_demo_data(Path(data_dir), data_args)
    t_data = time.perf_counter() - start
    recipe = [
        *DEMO_RECIPE,
        f"data.train={files.data_yaml}",
        f"data.val={files.data_yaml}",
        f"run.out_dir={out}",
        f"run.time_budget_minutes={minutes}",
        f"run.progress={str(progress).lower()}",
        *(extra or []),
    ]
    config = load_config(None, recipe)
    result = train(config)
    t_train = time.perf_counter() - start - t_data
    weights = out / (BEST_WEIGHTS if (out / BEST_WEIGHTS).is_file() else LAST_WEIGHTS)
    validation_grid(weights, files.data_yaml, out / "val_grid.png")
    t_pictures = time.perf_counter() - start - t_data - t_train
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    total = time.perf_counter() - start
    report = write_report(
        out,
        data_args=data_args,
        metrics=evaluation["metrics"],
        per_class=evaluation["per_class_ap"],
        timings={"data": t_data, "train": t_train, "pictures": t_pictures, "total": total},
        train_summary={
            "steps": result.step, "epochs": result.epochs,
            "batch_size": config.run.batch_size, "status": result.status,
        },
        recipe=[r for r in recipe if not r.startswith(("data.train", "data.val", "run.out_dir"))],
        thresholds=evaluation.get("thresholds"),
    )
    return DemoResult(out, report, evaluation["metrics"], total / 60)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``efficientdet demo``."""
    add_out(parser, "run folder with the report", default="runs/demo")
    parser.add_argument("--data-dir", default="data/digit-scenes", help="where the demo data is written")
    parser.add_argument("--minutes", type=float, default=10.5, help="training time budget")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="recipe override")


def run(args: argparse.Namespace) -> int:
    """Run :func:`run_demo` with the options of ``args`` and print the metrics and the report."""
    result = run_demo(args.out, data_dir=args.data_dir, minutes=args.minutes, extra=args.set or [])
    m = result.metrics
    print(
        f"demo finished in {result.minutes:.1f} min: validation AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}\n"
        f"report: {result.report}"
    )
    return 0
