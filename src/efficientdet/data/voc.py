"""Pascal VOC folders: ``Annotations/*.xml`` + ``JPEGImages/``, optional ``ImageSets/Main``.

Also read: ``annotations/`` + ``images/`` (names supervision's ``as_pascal_voc`` is often
given), and a folder holding the ``.xml`` files next to the images (Roboflow's VOC export,
one such folder per split); see :func:`voc_folders`.

VOC corners are 1-based and inclusive; with ``one_based=True`` (the VOC convention, as in
detectron2) ``xmin``/``ymin`` are shifted by -1 so a box becomes ``xyxy`` with pixel edges
``[xmin - 1, ymin - 1, xmax, ymax]``. Class names are the sorted names found in every
annotation file of the folder (so all splits share one class table) unless given.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .sample import (
    IMAGE_EXTENSIONS,
    DataError,
    DetectionData,
    DetectionSample,
    IssueLog,
    is_image_side,
    make_sample,
    read_image_size,
    where,
)


@dataclass
class _VocObject:
    name: str
    box: list[float]
    difficult: bool


@dataclass
class _VocRecord:
    xml_path: Path
    filename: str | None
    size: tuple[int, int] | None
    objects: list[_VocObject] = field(default_factory=list)


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _parse_xml(xml_path: Path, issues: IssueLog) -> _VocRecord | None:
    """One annotation file; malformed files and values are recorded as fatal issues."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        line, _ = err.position
        issues.add("unreadable_annotation", f"{where(xml_path, line)}: malformed XML: {err}")
        return None
    except OSError as err:
        issues.add("unreadable_annotation", f"{xml_path}: cannot read: {err}")
        return None
    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            width = int(float(_text(size_node, "width") or 0))
            height = int(float(_text(size_node, "height") or 0))
        except (ValueError, OverflowError):  # not a number, or inf
            width = height = 0
        if is_image_side(width) and is_image_side(height):
            size = (height, width)
    record = _VocRecord(xml_path=xml_path, filename=_text(root, "filename"), size=size)
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name")
        ctx = f"{xml_path}: object #{k + 1} ({name!r})"
        if not name:
            issues.add("invalid_annotation", f"{ctx}: missing <name>")
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            issues.add("invalid_annotation", f"{ctx}: missing <bndbox>")
            continue
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            raw = _text(bndbox, tag)
            try:
                value = float(raw) if raw is not None else math.nan
            except ValueError:
                issues.add("invalid_annotation", f"{ctx}: <{tag}> is not a number: {raw!r}")
                break
            if not math.isfinite(value):
                issues.add(
                    "invalid_annotation", f"{ctx}: <{tag}> is missing or not finite: {raw!r}"
                )
                break
            values.append(value)
        else:
            difficult = _text(obj, "difficult") or "0"
            record.objects.append(_VocObject(name, values, difficult.strip() not in ("0", "")))
    return record


def _split_ids(root: Path, split: str) -> list[str]:
    sets_dir = root / "ImageSets" / "Main"
    split_file = sets_dir / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in sets_dir.glob("*.txt") if "_" not in p.stem)
        raise DataError(
            f"{split_file}: split file not found; available splits: {available or 'none'}"
        )
    ids = []
    for line in split_file.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if tokens:
            ids.append(tokens[0])
    return ids


def _find_image(image_dir: Path, filename: str | None, stem: str) -> Path | None:
    if filename:
        candidate = image_dir / filename
        if candidate.is_file():
            return candidate
        stem = Path(filename).stem
    for ext in IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            candidate = image_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


VOC_LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"))


def has_xml(folder: Path) -> bool:
    """Whether ``folder`` directly holds a ``.xml`` file."""
    return folder.is_dir() and any(p.suffix.lower() == ".xml" for p in folder.iterdir())


def voc_folders(root: str | Path) -> tuple[Path, Path]:
    """``(annotations_dir, images_dir)`` of a VOC folder: ``Annotations/`` + ``JPEGImages/``,
    ``annotations/`` + ``images/`` (with ``.xml`` files), or ``root`` itself holding both.

    Raises:
        DataError: none of these layouts.
    """
    root = Path(root)
    for ann, img in VOC_LAYOUTS:
        if ann == "Annotations" and (root / ann).is_dir():
            return root / ann, root / img
        if has_xml(root / ann):
            return root / ann, root / img
    if has_xml(root):
        return root, root
    raise DataError(
        f"{root}: not a Pascal VOC folder (no Annotations/ folder, no annotations/ with .xml "
        "files, no .xml files in the folder itself)"
    )


def load_voc(
    root: str | Path,
    split: str | None = None,
    *,
    class_names: list[str] | None = None,
    one_based: bool = True,
    strict: bool = True,
    min_size: float = 1.0,
) -> DetectionData:
    """Read a Pascal VOC folder.

    Args:
        root: folder holding ``Annotations/`` and ``JPEGImages/`` (or another layout of
            :func:`voc_folders`).
        split: name of ``ImageSets/Main/{split}.txt``; None reads every annotation file.
        class_names: the class table (label = index); objects of other names are skipped
            and counted as ``unknown_category``. Default: sorted names found in all files.
        one_based: shift ``xmin``/``ymin`` by -1 (VOC's 1-based inclusive corners).
        strict: raise :class:`DataError` after reading if there are fatal problems
            (malformed XML with its line, non-numeric coordinates, ...).
        min_size: boxes narrower or shorter than this many pixels after clipping are dropped.

    Returns:
        :class:`DetectionData`; image ids are ``1..n`` in split (or sorted file) order and
        ``label_to_category_id`` is the identity.
    """
    root = Path(root)
    ann_dir, image_dir = voc_folders(root)
    issues = IssueLog()
    all_files = sorted(ann_dir.glob("*.xml"))
    stems = [p.stem for p in all_files] if split is None else _split_ids(root, split)
    records = _read_records(ann_dir, stems, split, issues)
    if class_names is None:
        class_names = _found_class_names(records, all_files)
    label_of = {name: i for i, name in enumerate(class_names)}
    if len(label_of) != len(class_names):
        raise DataError(f"{root}: class names are not unique: {class_names}")
    samples = _make_samples(records, image_dir, class_names, label_of, one_based, min_size, issues)
    if strict:
        issues.raise_if_fatal(root)
    return DetectionData(
        samples=samples,
        class_names=list(class_names),
        label_to_category_id=list(range(len(class_names))),
        format="voc",
        source=root,
        issues=issues,
    )


def _read_records(
    ann_dir: Path, stems: list[str], split: str | None, issues: IssueLog
) -> dict[str, _VocRecord | None]:
    """The annotation file of each stem, in order (None where it is malformed); stems listed
    twice or without a file are recorded and skipped."""
    records: dict[str, _VocRecord | None] = {}
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        if stem in records:
            issues.add("duplicate_image", f"{xml_path}: listed twice in split {split!r}")
            continue
        if not xml_path.is_file():
            issues.add("missing_annotation", f"{xml_path}: listed in split {split!r}, not found")
            continue
        records[stem] = _parse_xml(xml_path, issues)
    return records


def _found_class_names(records: dict[str, _VocRecord | None], all_files: list[Path]) -> list[str]:
    """The sorted object names of ``records`` and of every other file of the folder (its
    problems not recorded), so that all splits share one class table."""
    names = {o.name for r in records.values() if r is not None for o in r.objects}
    for xml_path in all_files:
        if xml_path.stem not in records:
            other = _parse_xml(xml_path, IssueLog(0))
            if other is not None:
                names.update(o.name for o in other.objects)
    return sorted(names)


def _make_samples(
    records: dict[str, _VocRecord | None],
    image_dir: Path,
    class_names: list[str],
    label_of: dict[str, int],
    one_based: bool,
    min_size: float,
    issues: IssueLog,
) -> list[DetectionSample]:
    """One sample per readable record whose image is found (image ids ``1..n``), its objects
    labelled by ``label_of``; objects of other names are recorded as ``unknown_category``."""
    samples: list[DetectionSample] = []
    shift = 1.0 if one_based else 0.0
    for stem, record in records.items():
        if record is None:
            continue
        image_path = _find_image(image_dir, record.filename, stem)
        ctx = str(record.xml_path)
        if image_path is None:
            issues.add(
                "missing_image", f"{ctx}: image {record.filename or stem} not in {image_dir}"
            )
            continue
        size = record.size
        if size is None:
            try:
                size = read_image_size(image_path)
            except (FileNotFoundError, DataError) as err:
                issues.add("unreadable_image", f"{ctx}: no <size> and {err}")
                continue
        boxes, labels, difficult = [], [], []
        for obj in record.objects:
            if obj.name not in label_of:
                issues.add("unknown_category", f"{ctx}: class {obj.name!r} is not in {class_names}")
                continue
            x0, y0, x1, y1 = obj.box
            boxes.append([x0 - shift, y0 - shift, x1, y1])
            labels.append(label_of[obj.name])
            difficult.append(obj.difficult)
        samples.append(
            make_sample(
                image_path=image_path,
                image_id=len(samples) + 1,
                size=size,
                boxes=boxes,
                labels=labels,
                difficult=difficult,
                issues=issues,
                context=ctx,
                min_size=min_size,
            )
        )
    return samples
