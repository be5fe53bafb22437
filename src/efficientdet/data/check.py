"""``check_dataset``: validate a dataset before a long run and report what was found.

The readers already fix what can be fixed (clip out-of-bounds boxes, drop degenerate ones,
skip unknown categories and missing images) and count it; the check adds what needs the
image files (missing, undecodable, size different from the annotation), label ranges and
duplicate ids in hand-built data, the class histogram and the box-size histogram per pyramid
level. Fatal problems (unreadable annotation file, malformed values, no images, no boxes at
all) are kept apart from the warnings about things the readers fixed.

Pyramid level of a box (the anchor rule): EfficientDet's anchors at level ``l`` have base
size ``anchor_scale * 2**l`` (32 px at P3 ... 512 px at P7 with ``anchor_scale = 4``), so a
box of side ``sqrt(w * h)`` (in network-input pixels when ``input_size`` is given, after
the letterbox resize) goes to the level whose anchor size is nearest in log scale,
``round(log2(sqrt(w * h) / anchor_scale))``, clamped to ``[min_level, max_level]``. A box
smaller than ``anchor_scale * 2**min_level / sqrt(2)`` cannot reach IoU 0.5 with any anchor
(counted as ``tiny_box``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .load import load_dataset
from .sample import (
    FATAL,
    IMAGE_ERRORS,
    INFO,
    WARNING,
    DataError,
    DetectionData,
    IssueLog,
    upright_size,
)
from .transforms import as_size


def assign_levels(
    boxes: Tensor, *, min_level: int = 3, max_level: int = 7, anchor_scale: float = 4.0
) -> Tensor:
    """Pyramid level per box by the anchor rule (module docstring).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy.

    Returns:
        ``Tensor[N]`` int64 in ``min_level..max_level``.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    side = (wh[:, 0] * wh[:, 1]).sqrt()
    level = torch.round(torch.log2(side / anchor_scale))
    return level.clamp(min_level, max_level).to(torch.int64)


@dataclass
class DataReport:
    """What :func:`check_dataset` found. ``fatal`` tells whether training should not start."""

    source: str
    format: str
    num_images: int = 0
    num_boxes: int = 0
    class_names: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    images_without_boxes: int = 0
    level_counts: dict[int, int] = field(default_factory=dict)
    box_side_quantiles: tuple[float, float, float] | None = None  # min, median, max
    input_size: tuple[int, int] | None = None
    issues: IssueLog = field(default_factory=IssueLog)
    bad_image_ids: list[int] = field(default_factory=list)
    # Every box with a known label, Tensor[N, 4] xyxy, after the letterbox resize to
    # input_size (original pixels when None): what anchor fitting looks at.
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))

    @property
    def fatal(self) -> bool:
        """True when a fatal problem was found."""
        return self.issues.has_fatal

    @property
    def fatal_kinds(self) -> list[str]:
        """Kinds of the fatal problems found."""
        return self.issues.kinds(FATAL)

    @property
    def warning_kinds(self) -> list[str]:
        """Kinds of the warnings (fixed by the readers or worth fixing in the data)."""
        return self.issues.kinds(WARNING)


def _check_images(data: DetectionData, issues: IssueLog, decode: bool) -> list[int]:
    bad = []
    for sample in data.samples:
        ctx = f"{sample.image_path} (image {sample.image_id})"
        try:
            with Image.open(sample.image_path) as img:
                height, width = upright_size(img)
                if decode:
                    img.load()
        except FileNotFoundError:
            issues.add("missing_image", f"{ctx}: file not found")
            bad.append(sample.image_id)
            continue
        except IMAGE_ERRORS as err:
            issues.add("unreadable_image", f"{ctx}: {err}")
            bad.append(sample.image_id)
            continue
        if (height, width) != sample.size:
            issues.add(
                "size_mismatch",
                f"{ctx}: annotated as {sample.size[1]}x{sample.size[0]} (w x h), "
                f"file is {width}x{height} (upright, EXIF orientation applied)",
            )
    return bad


def check_dataset(
    data: DetectionData | str | Path,
    *,
    split: str = "train",
    input_size: int | Sequence[int] | None = None,
    decode_images: bool = True,
    min_level: int = 3,
    max_level: int = 7,
    anchor_scale: float = 4.0,
) -> DataReport:
    """Validate a dataset and summarise it.

    Args:
        data: loaded data, or a path read with ``load_dataset(path, split, strict=False)``;
            an annotation file that cannot be read becomes a fatal issue in the report.
        split: the split to read when ``data`` is a path.
        input_size: network input ``H`` or ``(H, W)``; box sizes for the level histogram
            are taken after the letterbox resize to it (original pixels when None).
        decode_images: decode every image fully (catches truncated files); False only
            reads the headers.
        min_level, max_level, anchor_scale: the pyramid and anchor size of the level rule.

    Returns:
        :class:`DataReport`; render it with :func:`format_report`.
    """
    if not isinstance(data, DetectionData):
        try:
            data = load_dataset(data, split, strict=False)
        except DataError as err:
            report = DataReport(source=str(data), format="unknown")
            report.issues.add("unreadable_annotation", str(err))
            return report
    issues = data.issues.copy()
    size = as_size(input_size) if input_size is not None else None
    report = DataReport(
        source=str(data.source),
        format=data.format,
        num_images=len(data.samples),
        class_names=list(data.class_names),
        input_size=size,
        issues=issues,
    )
    report.bad_image_ids = _check_images(data, issues, decode_images)
    scan = _scan_boxes(data, report, min_level=min_level, max_level=max_level, anchor_scale=anchor_scale)
    _summarise_boxes(report, scan, min_level=min_level, max_level=max_level, anchor_scale=anchor_scale)
    _add_dataset_issues(report, data)
    return report


@dataclass
class _BoxScan:
    """What :func:`_scan_boxes` gathers over the samples with boxes."""

    class_counts: list[int]
    sides: list[Tensor] = field(default_factory=list)  # per sample: sqrt(w h) per box
    levels: list[Tensor] = field(default_factory=list)  # per sample: pyramid level per box
    known_boxes: list[Tensor] = field(default_factory=list)  # per sample: boxes of known labels


def _scan_boxes(
    data: DetectionData, report: DataReport, *, min_level: int, max_level: int, anchor_scale: float
) -> _BoxScan:
    """Count the images without boxes, the boxes per class, and each box's side and level
    (after the resize to ``report.input_size``); record duplicate image ids and labels
    outside the class table."""
    issues = report.issues
    size = report.input_size
    seen: dict[int, Path] = {}
    scan = _BoxScan(class_counts=[0] * data.num_classes)
    for sample in data.samples:
        if sample.image_id in seen and seen[sample.image_id] != sample.image_path:
            issues.add(
                "duplicate_image_id",
                f"image id {sample.image_id} names {seen[sample.image_id]} and {sample.image_path}",
            )
        seen.setdefault(sample.image_id, sample.image_path)
        if sample.num_boxes == 0:
            report.images_without_boxes += 1
            continue
        labels = sample.labels
        unknown = (labels < 0) | (labels >= data.num_classes)
        if unknown.any():
            issues.add(
                "unknown_category",
                f"{sample.image_path}: labels {labels[unknown].tolist()[:5]} outside "
                f"0..{data.num_classes - 1}",
                int(unknown.sum()),
            )
        for label in labels[~unknown].tolist():
            scan.class_counts[label] += 1
        boxes = sample.boxes
        if size is not None:
            boxes = boxes * min(size[0] / sample.height, size[1] / sample.width)
        scan.known_boxes.append(boxes[~unknown].float())
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        scan.sides.append((wh[:, 0] * wh[:, 1]).sqrt())
        scan.levels.append(
            assign_levels(
                boxes, min_level=min_level, max_level=max_level, anchor_scale=anchor_scale
            )
        )
    return scan


def _summarise_boxes(
    report: DataReport, scan: _BoxScan, *, min_level: int, max_level: int, anchor_scale: float
) -> None:
    """Fill the report's class and level histograms, boxes and side quantiles, and record
    the boxes too small for any anchor (``tiny_box``)."""
    report.class_counts = scan.class_counts
    if scan.known_boxes:
        report.boxes = torch.cat(scan.known_boxes)
    report.num_boxes = sum(scan.class_counts)
    all_levels = torch.cat(scan.levels) if scan.levels else torch.zeros(0, dtype=torch.int64)
    report.level_counts = {
        lvl: int((all_levels == lvl).sum()) for lvl in range(min_level, max_level + 1)
    }
    if scan.sides:
        all_sides = torch.cat(scan.sides)
        report.box_side_quantiles = (
            float(all_sides.min()),
            float(all_sides.median()),
            float(all_sides.max()),
        )
        smallest_ok = anchor_scale * 2**min_level / math.sqrt(2)
        n_tiny = int((all_sides < smallest_ok).sum())
        report.issues.add(
            "tiny_box",
            f"{n_tiny} box(es) with side below {smallest_ok:.1f} px"
            + (" at the input size" if report.input_size else ""),
            n_tiny,
        )


def _add_dataset_issues(report: DataReport, data: DetectionData) -> None:
    """Record the classes without boxes, and a set with no usable images or no boxes."""
    issues = report.issues
    for label, count in enumerate(report.class_counts):
        if count == 0:
            issues.add("class_without_boxes", f"class {label} ({data.class_names[label]!r})")
    if report.num_images == 0:
        issues.add("no_images", f"{data.source}: no usable images")
    elif len(set(report.bad_image_ids)) == report.num_images:
        issues.add("no_images", f"{data.source}: none of the {report.num_images} image(s) can be read")
    elif report.num_boxes == 0:
        issues.add("no_boxes", f"{data.source}: no boxes in {report.num_images} image(s)")


def _bar(count: int, total: int, width: int = 30) -> str:
    return "#" * (round(width * count / total) if total else 0)


def format_report(report: DataReport, max_examples: int = 3) -> str:
    """The report as text: verdict, counts, histograms, then issues by severity with examples."""
    if report.fatal:
        verdict = "FATAL: fix the problems below before training"
    elif report.warning_kinds:
        verdict = "OK, with warnings (the readers fixed or skipped what is listed)"
    else:
        verdict = "OK"
    lines = [
        f"Dataset {report.source} ({report.format}): {verdict}",
        f"  images: {report.num_images}   boxes: {report.num_boxes}   "
        f"images without boxes: {report.images_without_boxes}   "
        f"classes: {len(report.class_names)}",
    ]
    if report.class_names:
        lines.append("  boxes per class:")
        width = max(len(n) for n in report.class_names)
        for name, count in zip(report.class_names, report.class_counts, strict=True):
            lines.append(f"    {name:<{width}} {count:>8}  {_bar(count, report.num_boxes)}")
    if report.level_counts:
        where_ = (
            f"at input {report.input_size[0]}x{report.input_size[1]}"
            if report.input_size
            else "in original pixels"
        )
        lines.append(f"  boxes per pyramid level (nearest anchor size, {where_}):")
        for level, count in report.level_counts.items():
            lines.append(f"    P{level} {count:>8}  {_bar(count, report.num_boxes)}")
    if report.box_side_quantiles is not None:
        lo, mid, hi = report.box_side_quantiles
        lines.append(f"  box side sqrt(w*h): min {lo:.1f}  median {mid:.1f}  max {hi:.1f} px")
    for severity in (FATAL, WARNING, INFO):
        kinds = report.issues.kinds(severity)
        if not kinds:
            continue
        lines.append(f"  {severity}:")
        for kind in kinds:
            lines.append(f"    {kind}: {report.issues.count(kind)}")
            for message in report.issues.examples.get(kind, [])[:max_examples]:
                lines.append(f"      {message}")
    return "\n".join(lines)
