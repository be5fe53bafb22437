"""Files that show what went wrong in an evaluation: tables, plots, error galleries, a report.

Everything here draws or writes what :func:`efficientdet.inference.error_analysis.analyze_errors`
computed; :func:`write_error_outputs` writes all of it next to ``metrics.json``:

- ``confusion_matrix.csv`` / ``.png``: ``[predicted, true]`` counts with a background row and
  column, at the overall F1-best score threshold (the plot's colours are shares of each true
  class, i.e. of each column);
- ``pr_curves.csv`` / ``.png``: per-class and all-class precision-recall curves at the IoU
  threshold (0.5);
- ``thresholds.json``: the F1-best score threshold per class and overall;
- ``errors/false_positives.jpg`` and ``errors/missed.jpg``: the images with the
  highest-scoring false positives and with the most missed boxes;
- ``report.md``: all of it tied together.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import DataError, DetectionSample
from .error_analysis import (
    ERROR_KINDS,
    ErrorAnalysis,
    ImageMatch,
    Outcome,
    class_counts,
    most_missed_images,
    worst_false_positive_images,
)
from .eval_result import EvalResult
from .visualize import add_legend, draw_detections, draw_ground_truth, make_grid

log = logging.getLogger(__name__)

__all__ = [
    "GALLERY_SIZE",
    "STATUS_COLORS",
    "draw_match",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "write_confusion_csv",
    "write_error_outputs",
    "write_galleries",
    "write_pr_curves_csv",
    "write_report",
]

# Images per error gallery.
GALLERY_SIZE = 16
# Largest cell of a gallery grid (W, H): bigger images are shrunk after drawing.
GALLERY_CELL = (480, 480)
# Smaller images are enlarged (by a whole factor) to about this short side before drawing,
# so that boxes and tags stay legible.
GALLERY_MIN_SIDE = 256

Color = tuple[int, int, int]
STATUS_COLORS: dict[str, Color] = {
    "ground_truth": (255, 255, 255),
    "missed": (255, 150, 0),
    "true_positive": (40, 200, 70),
    "false_positive": (235, 30, 60),
}
LEGEND: list[tuple[str, Color, bool]] = [
    ("ground truth (found)", STATUS_COLORS["ground_truth"], True),
    ("missed", STATUS_COLORS["missed"], True),
    ("true positive", STATUS_COLORS["true_positive"], False),
    ("false positive", STATUS_COLORS["false_positive"], False),
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_confusion_csv(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """The ``[predicted, true]`` counts as CSV: a header of true classes, one row per
    predicted class, ``background`` last in both."""
    names = [*analysis.class_names, "background"]
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["predicted \\ true", *names])
        for name, row in zip(names, analysis.confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    return path


def plot_confusion_matrix(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """Heat map of the confusion matrix: colour is the share of each true class (column),
    the number in a cell is the count."""
    plt = _pyplot()
    matrix = analysis.confusion.astype(np.float64)
    totals = matrix.sum(axis=0, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    names = [*analysis.class_names, "background"]
    n = len(names)
    side = min(24.0, max(5.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(np.arange(n), names, rotation=90 if n > 8 else 0)
    ax.set_yticks(np.arange(n), names)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    ax.set_title(
        f"Confusion matrix, IoU {analysis.iou_threshold:g}, score >= {analysis.score_threshold:.3f}"
    )
    font = max(4.0, min(9.0, 120.0 / n))
    for (p, t), count in np.ndenumerate(analysis.confusion):
        if count:
            ax.text(t, p, str(count), ha="center", va="center", fontsize=font,
                    color="white" if shares[p, t] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_pr_curves_csv(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """Every point of every curve: ``class, threshold, precision, recall, f1, tp, fp, num_gt``
    (``class`` is ``all`` for the all-class curve), highest threshold first."""
    path = Path(path)
    curves = [*zip(analysis.class_names, analysis.curves, strict=True), ("all", analysis.overall_curve)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "threshold", "precision", "recall", "f1", "tp", "fp", "num_gt"])
        for name, curve in curves:
            for k in range(len(curve)):
                writer.writerow([
                    name, f"{curve.thresholds[k]:.6g}", f"{curve.precision[k]:.6f}",
                    f"{curve.recall[k]:.6f}", f"{curve.f1[k]:.6f}", int(curve.tp[k]),
                    int(curve.fp[k]), curve.num_gt,
                ])
    return path


def plot_pr_curves(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """One precision-recall line per class and a thick black all-class line with its F1-best
    point marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 6))
    cmap = plt.get_cmap("tab20")
    for k, (name, curve) in enumerate(zip(analysis.class_names, analysis.curves, strict=True)):
        if len(curve) == 0:
            continue
        ax.plot(curve.recall, curve.precision, color=cmap(k % 20), linewidth=1.2, label=name)
    total = analysis.overall_curve
    if len(total):
        ax.plot(total.recall, total.precision, color="black", linewidth=2.5, label="all classes")
    best = analysis.overall
    if best.threshold is not None:
        ax.plot([best.recall], [best.precision], marker="*", markersize=14, color="black",
                linestyle="none", label=f"best F1 {best.f1:.3f} at score {best.threshold:.3f}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall at IoU {analysis.iou_threshold:g}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        columns = 1 if analysis.num_classes <= 20 else 2
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=columns)
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def draw_match(
    image: Image.Image, match: ImageMatch, class_names: Sequence[str], *, scale: int = 1
) -> Image.Image:
    """``image`` with ``match`` drawn by status: found ground truth dashed white, missed boxes
    dashed orange, true positives solid green, false positives solid red (ignored detections
    are not drawn). Tags show the class (and the detection's score).

    ``scale`` enlarges the picture (and the boxes) by a whole factor before drawing.
    """
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    found = ~match.missed
    gt_boxes, det_boxes = match.gt_boxes * scale, match.det_boxes * scale
    picture = draw_ground_truth(
        image, gt_boxes[found], match.gt_labels[found], class_names,
        color=STATUS_COLORS["ground_truth"],
    )
    picture = draw_ground_truth(
        picture, gt_boxes[match.missed], match.gt_labels[match.missed], class_names,
        color=STATUS_COLORS["missed"],
    )
    for keep, color in (
        (match.outcome == Outcome.TRUE_POSITIVE, STATUS_COLORS["true_positive"]),
        (match.false_positive, STATUS_COLORS["false_positive"]),
    ):
        picture = draw_detections(
            picture, det_boxes[keep], match.det_scores[keep], match.det_labels[keep],
            class_names, score_threshold=-np.inf, color=color,
        )
    return picture


def _gallery(
    indices: Sequence[int],
    analysis: ErrorAnalysis,
    samples: dict[int, DetectionSample],
    path: Path,
) -> list[int]:
    """Draw the images at ``indices`` of ``analysis.matches`` as a grid with a legend at
    ``path``; returns the image ids drawn (images that cannot be read are skipped)."""
    pictures, drawn = [], []
    for i in indices:
        match = analysis.matches[i]
        image_id = match.image_id
        sample = samples.get(image_id) if image_id is not None else None
        if image_id is None or sample is None:
            continue
        try:
            image = sample.load_image()
        except DataError as err:
            log.warning("error gallery: %s", err)
            continue
        scale = max(1, round(GALLERY_MIN_SIDE / max(1, min(image.size))))
        pictures.append(draw_match(image, match, analysis.class_names, scale=scale))
        drawn.append(image_id)
    if not pictures:
        return []
    cell = (
        min(GALLERY_CELL[0], max(p.width for p in pictures)),
        min(GALLERY_CELL[1], max(p.height for p in pictures)),
    )
    grid = make_grid(pictures, 4, cell_size=cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    add_legend(grid, LEGEND).save(path, quality=90)
    return drawn


def write_galleries(
    analysis: ErrorAnalysis,
    samples: Sequence[DetectionSample],
    out_dir: str | Path,
    *,
    count: int = GALLERY_SIZE,
) -> dict[str, tuple[Path, list[int]]]:
    """Write ``errors/false_positives.jpg`` (images by their highest-scoring false positive)
    and ``errors/missed.jpg`` (images by their number of missed boxes), ``count`` images
    each at most. A gallery with no image to show is not written.

    Returns:
        ``{"false_positives" | "missed": (path, image ids in grid order)}`` for the
        galleries written.
    """
    by_id = {s.image_id: s for s in samples}
    out = Path(out_dir) / "errors"
    written: dict[str, tuple[Path, list[int]]] = {}
    for name, indices in (
        ("false_positives", worst_false_positive_images(analysis.matches, count)),
        ("missed", most_missed_images(analysis.matches, count)),
    ):
        path = out / f"{name}.jpg"
        path.unlink(missing_ok=True)
        ids = _gallery(indices, analysis, by_id, path)
        if ids:
            written[name] = (path, ids)
    return written


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value >= 0 else "n/a"


def _what_went_wrong(analysis: ErrorAnalysis) -> list[str]:
    names = analysis.class_names
    total = sum(analysis.errors.values())
    lines = []
    if total == 0:
        return ["- Nothing: every box was found and every detection was right."]
    shares = ", ".join(
        f"{kind} {analysis.errors[kind]} ({analysis.errors[kind] / total:.0%})"
        for kind in ERROR_KINDS
    )
    lines.append(f"- {total} errors at score >= {analysis.score_threshold:.3f}: {shares}.")
    lines.append(
        "  Localisation: a detection of the right class overlapping its box with IoU 0.1-0.5; "
        "confusion: a detection on a box of another class (IoU >= 0.5); duplicate: a second "
        "detection of an already found box; background: a detection near no box of its class; "
        "missed: a box no detection found."
    )
    confusions = analysis.top_confusions(5)
    if confusions:
        pairs = "; ".join(
            f"{names[t]} taken for {names[p]}: {n} of {int(analysis.num_gt[t])} boxes"
            for t, p, n in confusions
        )
        lines.append(f"- Most confused classes (true taken for predicted): {pairs}.")
    else:
        lines.append("- No box was taken for another class.")
    missed = analysis.most_missed_classes(5)
    if missed:
        text = "; ".join(f"{names[k]}: {m} of {n} boxes ({m / n:.0%})" for k, m, n in missed)
        lines.append(f"- Most missed classes: {text}.")
    _, fp, _ = class_counts(analysis.confusion)
    if fp.sum():
        worst = sorted(range(analysis.num_classes), key=lambda k: (-int(fp[k]), k))[:3]
        text = "; ".join(f"{names[k]}: {int(fp[k])}" for k in worst if fp[k])
        lines.append(f"- Most false positives (by predicted class): {text}.")
    return lines


def write_report(
    out_dir: str | Path,
    result: EvalResult,
    analysis: ErrorAnalysis,
    galleries: dict[str, tuple[Path, list[int]]],
) -> Path:
    """``report.md`` in ``out_dir``: headline metrics, per-class table, what went wrong, the
    confusion matrix, the PR curves and the galleries (linked relative to ``out_dir``)."""
    out = Path(out_dir)
    lines = [
        *_headline_lines(result, analysis),
        *_per_class_lines(result, analysis),
        "",
        "## What went wrong",
        "",
        *_what_went_wrong(analysis),
        "",
        *_figure_lines(analysis),
        *_gallery_lines(galleries, out),
        "## Files",
        "",
        "`metrics.json` (COCO metrics, per-class AP and AP50, thresholds, error counts), "
        "`thresholds.json`, `confusion_matrix.csv`, `pr_curves.csv`, `detections.json` (COCO "
        "results), `per_class_ap.png`, `confusion_matrix.png`, `pr_curves.png`, `errors/`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _headline_lines(result: EvalResult, analysis: ErrorAnalysis) -> list[str]:
    """The report's title, the counts, the COCO metrics and the overall F1-best threshold."""
    m = result.metrics
    o = analysis.overall
    lines = [
        "# Evaluation report",
        "",
        f"{result.num_images} images, {int(analysis.num_gt.sum())} ground-truth boxes, "
        f"{analysis.num_classes} classes, {result.num_detections} detections "
        "(every score, as COCO AP counts them).",
    ]
    if result.unreadable:
        lines.append(f"{len(result.unreadable)} images could not be read and are left out.")
    lines += [
        "",
        "## Headline metrics (COCO)",
        "",
        "| AP[.5:.95] | AP50 | AP75 | AP small | AP medium | AP large | AR100 |",
        "|---|---|---|---|---|---|---|",
        f"| {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {_fmt(m['AP_small'])} | "
        f"{_fmt(m['AP_medium'])} | {_fmt(m['AP_large'])} | {m['AR100']:.3f} |",
        "",
    ]
    if o.threshold is not None:
        lines.append(
            f"At the score threshold with the best overall F1, **{o.threshold:.3f}** (IoU "
            f"{analysis.iou_threshold:g}): precision {o.precision:.3f}, recall {o.recall:.3f}, "
            f"F1 {o.f1:.3f} ({o.tp} true positives, {o.fp} false positives, {o.fn} false negatives)."
        )
    else:
        lines.append(
            f"No score threshold gives a true positive at IoU {analysis.iou_threshold:g}; the "
            f"confusion matrix and galleries use score >= {analysis.score_threshold:.3f}."
        )
    return lines


def _per_class_lines(result: EvalResult, analysis: ErrorAnalysis) -> list[str]:
    """The per-class table: AP, AP50, the class's own F1-best threshold and its counts, and
    the errors at the overall threshold."""
    _, fp, fn = class_counts(analysis.confusion)
    lines = [
        "",
        "## Per class",
        "",
        "AP and AP50 from pycocotools; threshold, precision, recall, F1, TP, FP and FN at the "
        "class's own F1-best score threshold ([thresholds.json](thresholds.json)); the last two "
        f"columns at the overall threshold {analysis.score_threshold:.3f} (the confusion matrix's; "
        "FP by predicted class, FN by true class, confusions included).",
        "",
        "| class | boxes | AP | AP50 | threshold | precision | recall | F1 | TP | FP | FN | FP @ overall | FN @ overall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, (name, choice) in enumerate(zip(analysis.class_names, analysis.per_class, strict=True)):
        lines.append(
            f"| {name} | {int(analysis.num_gt[k])} | {_fmt(result.per_class_ap.get(name))} | "
            f"{_fmt(result.per_class_ap50.get(name))} | {_fmt(choice.threshold)} | "
            f"{choice.precision:.3f} | {choice.recall:.3f} | {choice.f1:.3f} | {choice.tp} | "
            f"{choice.fp} | {choice.fn} | {int(fp[k])} | {int(fn[k])} |"
        )
    return lines


def _figure_lines(analysis: ErrorAnalysis) -> list[str]:
    """The sections around the confusion matrix, the PR curves and the galleries' legend."""
    return [
        "## Confusion matrix",
        "",
        f"Rows: predicted class, columns: true class, at IoU {analysis.iou_threshold:g} and score "
        f">= {analysis.score_threshold:.3f}. Detections that match no box are in the background "
        "column, missed boxes in the background row. Colours are shares of each true class; "
        "numbers are counts ([confusion_matrix.csv](confusion_matrix.csv)).",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Precision-recall curves",
        "",
        f"At IoU {analysis.iou_threshold:g}, one point per distinct score; the star is the "
        "overall F1-best threshold. Data: [pr_curves.csv](pr_curves.csv).",
        "",
        "![precision-recall curves](pr_curves.png)",
        "",
        "## Error galleries",
        "",
        f"Detections at score >= {analysis.score_threshold:.3f}. Dashed white: ground truth that "
        "was found; dashed orange: missed; solid green: true positive; solid red: false "
        "positive.",
        "",
    ]


def _gallery_lines(galleries: dict[str, tuple[Path, list[int]]], out: Path) -> list[str]:
    """One subsection per gallery: the picture (relative to ``out``) and its image ids."""
    titles = {
        "false_positives": "Images with the highest-scoring false positives",
        "missed": "Images with the most missed boxes",
    }
    lines: list[str] = []
    for name, title in titles.items():
        lines += [f"### {title}", ""]
        if name in galleries:
            path, ids = galleries[name]
            rel = path.relative_to(out).as_posix()
            lines += [
                f"![{title.lower()}]({rel})",
                "",
                "Image ids, row by row: " + ", ".join(str(i) for i in ids),
                "",
            ]
        else:
            lines += ["None at this threshold.", ""]
    return lines


def write_error_outputs(
    result: EvalResult,
    analysis: ErrorAnalysis,
    out_dir: str | Path,
    samples: Sequence[DetectionSample] | None = None,
) -> dict[str, Path]:
    """Write every error-analysis file into ``out_dir`` (see the module docstring).

    Args:
        result: the COCO metrics the report heads with.
        analysis: what :func:`~efficientdet.inference.error_analysis.analyze_errors` found.
        out_dir: the evaluation folder (created if needed).
        samples: the evaluated images, for the galleries (no galleries without them).

    Returns:
        Name -> path of each file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "thresholds": out / "thresholds.json",
        "confusion_csv": write_confusion_csv(analysis, out / "confusion_matrix.csv"),
        "confusion_png": plot_confusion_matrix(analysis, out / "confusion_matrix.png"),
        "pr_csv": write_pr_curves_csv(analysis, out / "pr_curves.csv"),
        "pr_png": plot_pr_curves(analysis, out / "pr_curves.png"),
    }
    paths["thresholds"].write_text(json.dumps(analysis.thresholds_dict(), indent=2))
    galleries = write_galleries(analysis, samples, out) if samples is not None else {}
    for name, (path, _) in galleries.items():
        paths[name] = path
    paths["report"] = write_report(out, result, analysis, galleries)
    return paths
