"""YOLO txt folders: ``images/`` + ``labels/`` with one ``cls cx cy w h`` line per box.

Coordinates are normalised to the image size, which is read from the image header (PIL
opens lazily, the pixels are not decoded). A line of ``cls x1 y1 x2 y2 ... xk yk`` (a
segmentation polygon, k >= 3) becomes the polygon's bounding box. An image without a label
file is a negative image. Class names come from ``names`` in a ``data.yaml`` (a list or an
``{index: name}`` mapping) or from ``classes.txt`` (one name per line).

Layouts found for a split ``s`` (or its other spellings, ``valid`` for ``val``):
``root/images/s`` + ``root/labels/s`` (ultralytics), ``root/s/images`` + ``root/s/labels``
(roboflow), ``root/images`` + ``root/labels``, or ``root`` being an images folder itself
(the last ``images`` path component is replaced by ``labels``).

:func:`load_yolo_sources` reads Ultralytics-style split entries instead: image folders and
``.txt`` files listing image paths, each image's label file found by Ultralytics' rule
(:func:`label_path_for`; beside the image when the path has no ``images`` folder, as in
darknet and CVAT "YOLO 1.1" exports).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from .locate import split_names
from .sample import (
    IMAGE_EXTENSIONS,
    DataError,
    DetectionData,
    DetectionSample,
    IssueLog,
    make_sample,
    read_image_size,
    where,
)

CLASS_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "classes.names", "obj.names")
# Without a class table the classes are numbered up to the largest index found; a larger
# index is a broken label line (``1e9``), not a dataset with a billion classes.
MAX_INFERRED_CLASSES = 100_000


def _labels_for(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir.parent / "labels"


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def yolo_folders(root: str | Path, split: str | None = None) -> tuple[Path, Path]:
    """``(images_dir, labels_dir)`` of a YOLO dataset, trying the common layouts.

    Raises:
        DataError: naming the folders that were tried.
    """
    root = Path(root)
    candidates: list[tuple[Path, Path]] = []
    for name in split_names(split) if split is not None else []:
        candidates += [
            (root / "images" / name, root / "labels" / name),
            (root / name / "images", root / name / "labels"),
        ]
    flat = [(root / "images", root / "labels")]
    if "images" in root.parts:
        flat.append((root, _labels_for(root)))
    for images_dir, labels_dir in candidates + flat:
        if not (images_dir.is_dir() and labels_dir.is_dir()):
            continue
        # A split asked of a folder that has no such split: use a flat folder only when it
        # holds images itself, never one whose images sit in other splits' sub-folders.
        if split is None or (images_dir, labels_dir) not in flat or _has_images(images_dir):
            return images_dir, labels_dir
    candidates += flat
    tried = ", ".join(f"{i} + {lab}" for i, lab in candidates)
    raise DataError(f"{root}: no YOLO images/labels folders for split {split!r}; tried {tried}")


def names_from_yaml_value(value: Any, source: str | Path) -> list[str]:
    """Class names from a YAML ``names`` value: a list, or ``{index: name}`` with 0..K-1."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            indexed = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError) as err:
            raise DataError(f"{source}: 'names' keys must be class indices: {err}") from err
        if sorted(indexed) != list(range(len(indexed))):
            raise DataError(f"{source}: 'names' indices must be 0..K-1, got {sorted(indexed)}")
        return [indexed[i] for i in range(len(indexed))]
    raise DataError(f"{source}: 'names' must be a list or a mapping, got {type(value).__name__}")


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a YAML data file (``names``) or a text file (one per line)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise DataError(f"{path}: malformed YAML: {err}") from err
        if not isinstance(doc, dict) or "names" not in doc:
            raise DataError(f"{path}: no 'names' entry")
        return names_from_yaml_value(doc["names"], path)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _find_class_names(root: Path, images_dir: Path, labels_dir: Path) -> list[str] | None:
    common = Path(os.path.commonpath([images_dir, labels_dir]))
    for folder in dict.fromkeys([root, common, labels_dir]):
        for name in CLASS_FILES:
            if (folder / name).is_file():
                try:
                    return read_class_names(folder / name)
                except DataError:
                    continue
    return None


def _parse_number(token: str, what: str, ctx: str, issues: IssueLog) -> float | None:
    try:
        value = float(token)
    except ValueError:
        issues.add("invalid_annotation", f"{ctx}: {what} is not a number: {token!r}")
        return None
    if not math.isfinite(value):
        issues.add("invalid_annotation", f"{ctx}: {what} is not finite: {token!r}")
        return None
    return value


def _parse_line(
    line: str, ctx: str, size: tuple[int, int], issues: IssueLog
) -> tuple[int, list[float]] | None:
    """``(class index, xyxy pixels)`` from one label line, or None (recorded as invalid)."""
    tokens = line.split()
    n = len(tokens)
    if n != 5 and (n < 7 or n % 2 == 0):
        issues.add(
            "invalid_annotation",
            f"{ctx}: expected 'class cx cy w h' (5 values) or a polygon, got {n} values",
        )
        return None
    cls_value = _parse_number(tokens[0], "class", ctx, issues)
    if cls_value is None:
        return None
    if not cls_value.is_integer():
        issues.add("invalid_annotation", f"{ctx}: class must be an integer, got {tokens[0]!r}")
        return None
    values = []
    for k, token in enumerate(tokens[1:]):
        value = _parse_number(token, f"value {k + 2}", ctx, issues)
        if value is None:
            return None
        values.append(value)
    height, width = size
    if n == 5:
        cx, cy, w, h = values
        box = [
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        ]
    else:
        xs, ys = values[0::2], values[1::2]
        box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
    return int(cls_value), box


def load_yolo(
    root: str | Path,
    split: str | None = None,
    *,
    class_names: list[str] | None = None,
    strict: bool = True,
    min_size: float = 1.0,
) -> DetectionData:
    """Read a YOLO txt dataset (see the module docstring for the layouts).

    Args:
        root: dataset folder (or the images folder itself).
        split: sub-folder name such as ``"train"``; None for a flat ``images/`` folder.
        class_names: the class table; default from ``data.yaml``/``classes.txt`` next to the
            data, else ``"0".."K-1"`` with K one more than the largest index (recorded as
            ``class_names_inferred``; an index of 100,000 or more then raises
            :class:`DataError`). Indices outside the table count as ``unknown_category``.
        strict: raise :class:`DataError` after reading if there are fatal problems
            (malformed lines, named with file and line number).
        min_size: boxes narrower or shorter than this many pixels after clipping are dropped.

    Returns:
        :class:`DetectionData`; image ids ``1..n`` in sorted path order, identity category ids.
    """
    root = Path(root)
    images_dir, labels_dir = yolo_folders(root, split)
    names = (
        class_names if class_names is not None else _find_class_names(root, images_dir, labels_dir)
    )
    image_paths = sorted(
        p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    pairs = [(p, labels_dir / p.relative_to(images_dir).with_suffix(".txt")) for p in image_paths]
    return _read_yolo(pairs, root, names, IssueLog(), strict=strict, min_size=min_size)


def label_path_for(image_path: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels`` and the
    suffix ``.txt``; an image outside any ``images`` folder has its label file beside it
    (darknet's and CVAT "YOLO 1.1"'s layout)."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def resolve_listed(line: str, bases: list[Path]) -> Path:
    """The image a line of a list file (``train.txt``) names.

    Absolute paths are kept. A relative one is tried under each base in turn (the list
    file's folder, then the dataset root), then with leading folders removed one at a time
    (darknet lists write ``data/obj_train_data/x.jpg`` for a file at
    ``obj_train_data/x.jpg``). When nothing exists the first plain candidate is returned
    (and reported missing by the reader).
    """
    path = Path(line)
    if path.is_absolute():
        return path
    parts = path.parts
    for k in range(len(parts)):
        tail = Path(*parts[k:])
        for base in bases:
            if (base / tail).is_file():
                return base / tail
    return bases[0] / path


def yolo_image_list(sources: list[Path], root: Path, issues: IssueLog) -> list[Path]:
    """Images of Ultralytics-style split entries: folders (searched recursively) and
    ``.txt`` files listing one image path per line (see :func:`resolve_listed`)."""
    images: list[Path] = []
    for source in sources:
        if source.is_dir():
            images += sorted(
                p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            continue
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            issues.add("unreadable_annotation", f"{source}: cannot read image list: {err}")
            continue
        bases = list(dict.fromkeys([source.parent, root]))
        shortened: list[tuple[int, str, Path]] = []
        for lineno, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = resolve_listed(line, bases)
            if not path.is_file():
                issues.add("missing_image", f"{where(source, lineno)}: {line} not found")
                continue
            if not Path(line).is_absolute() and path not in [b / line for b in bases]:
                shortened.append((lineno, line, path))
            images.append(path)
        if shortened:
            lineno, line, path = shortened[0]
            issues.add(
                "images_found_elsewhere",
                f"{where(source, lineno)}: {len(shortened)} listed path(s) do not exist under "
                f"{' or '.join(str(b) for b in bases)} as written; found with leading folders "
                f"removed, e.g. {line} -> {path}",
            )
    return images


def load_yolo_sources(
    sources: list[Path],
    root: str | Path,
    *,
    class_names: list[str] | None = None,
    strict: bool = True,
    min_size: float = 1.0,
) -> DetectionData:
    """Read YOLO labels for the images of Ultralytics-style split entries.

    Args:
        sources: image folders and ``.txt`` image lists (:func:`yolo_image_list`).
        root: the dataset root, the second base for relative list entries and the
            ``source`` of the result.
        class_names: the class table; else inferred as in :func:`load_yolo`.
        strict: raise :class:`DataError` on fatal problems (named with file and line).
        min_size: boxes narrower or shorter than this many pixels after clipping are dropped.

    Returns:
        :class:`DetectionData`; label files found by :func:`label_path_for`.
    """
    root = Path(root)
    issues = IssueLog()
    images = yolo_image_list(sources, root, issues)
    pairs = [(p, label_path_for(p)) for p in images]
    return _read_yolo(pairs, root, class_names, issues, strict=strict, min_size=min_size)


def _read_yolo(
    pairs: list[tuple[Path, Path]],
    root: Path,
    names: list[str] | None,
    issues: IssueLog,
    *,
    strict: bool,
    min_size: float,
) -> DetectionData:
    """Parse the label file of each ``(image, label file)`` pair into samples."""
    parsed = []  # (image path, size, label path, [(cls, box, line ctx)])
    seen_labels: dict[Path, Path] = {}
    for image_path, label_path in pairs:
        if label_path in seen_labels:
            issues.add(
                "duplicate_image",
                f"{image_path}: shares {label_path} with {seen_labels[label_path]}; skipped",
            )
            continue
        seen_labels[label_path] = image_path
        try:
            size = read_image_size(image_path)
        except (FileNotFoundError, DataError) as err:
            issues.add("unreadable_image", str(err))
            continue
        entries = []
        if label_path.is_file():
            try:
                lines = label_path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                issues.add("unreadable_annotation", f"{label_path}: cannot read: {err}")
                continue
            for lineno, line in enumerate(lines, start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                ctx = where(label_path, lineno)
                result = _parse_line(line, ctx, size, issues)
                if result is not None:
                    entries.append((result[0], result[1], ctx))
        parsed.append((image_path, size, label_path, entries))

    if names is None:
        largest = max((c for *_, entries in parsed for c, _, _ in entries), default=-1)
        if largest >= MAX_INFERRED_CLASSES:
            raise DataError(
                f"{root}: class index {largest} in the labels and no class names (data.yaml "
                f"'names' or classes.txt); refusing to infer more than {MAX_INFERRED_CLASSES} "
                "classes"
            )
        names = [str(i) for i in range(largest + 1)]
        issues.add(
            "class_names_inferred",
            f"{root}: no class names (data.yaml 'names' or classes.txt); using {len(names)} "
            "classes named by index",
        )

    samples: list[DetectionSample] = []
    for image_path, size, label_path, entries in parsed:
        boxes, labels = [], []
        for cls, box, ctx in entries:
            if not 0 <= cls < len(names):
                issues.add("unknown_category", f"{ctx}: class {cls} is not in 0..{len(names) - 1}")
                continue
            boxes.append(box)
            labels.append(cls)
        samples.append(
            make_sample(
                image_path=image_path,
                image_id=len(samples) + 1,
                size=size,
                boxes=boxes,
                labels=labels,
                issues=issues,
                context=str(label_path),
                min_size=min_size,
            )
        )
    if strict:
        issues.raise_if_fatal(root)
    return DetectionData(
        samples=samples,
        class_names=list(names),
        label_to_category_id=list(range(len(names))),
        format="yolo",
        source=root,
        issues=issues,
    )
