"""What an evaluation gives: :class:`EvalResult` (COCO metrics, per-class AP, the error
analysis) and its one-screen summary.

Its own module so that evaluation (:mod:`efficientdet.inference.evaluate`, which computes it)
and the files that show it (:mod:`efficientdet.inference.error_report`, which reads it) both
import it and neither imports the other to get it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .error_analysis import ErrorAnalysis

#: The metrics in the order of pycocotools' ``COCOeval.stats``.
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


@dataclass
class EvalResult:
    """COCO metrics (``-1`` where a category of sizes has no ground truth).

    ``unreadable`` lists the images that could not be read (file and problem); they are left
    out of the ground truth and the metrics. ``per_class_ap`` is AP[.5:.95] and
    ``per_class_ap50`` AP at IoU 0.5, by class name (``-1`` for a class without boxes).
    ``error_analysis`` is what went wrong (matching at IoU 0.5, F1-best thresholds, confusion
    matrix), when it was computed.
    """

    metrics: dict[str, float]
    per_class_ap: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0
    unreadable: list[str] = field(default_factory=list)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    error_analysis: ErrorAnalysis | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: the metrics, per-class AP, counts and, with an error
        analysis, its thresholds and summary."""
        data: dict[str, Any] = {
            "metrics": self.metrics,
            "per_class_ap": self.per_class_ap,
            "per_class_ap50": self.per_class_ap50,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "unreadable_images": self.unreadable,
        }
        if self.error_analysis is not None:
            data["thresholds"] = self.error_analysis.thresholds_dict()
            data["error_analysis"] = self.error_analysis.summary_dict()
        return data


def format_metrics(result: EvalResult) -> str:
    """Human-readable summary lines."""
    m = result.metrics
    lines = [
        f"AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  AP75 {m['AP75']:.4f}  "
        f"APs {m['AP_small']:.4f}  APm {m['AP_medium']:.4f}  APl {m['AP_large']:.4f}",
        f"AR1 {m['AR1']:.4f}  AR10 {m['AR10']:.4f}  AR100 {m['AR100']:.4f}",
    ]
    if result.per_class_ap:
        lines.append("per class: " + ", ".join(f"{k} {v:.3f}" for k, v in result.per_class_ap.items()))
    return "\n".join(lines)
