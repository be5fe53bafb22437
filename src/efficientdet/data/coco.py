"""COCO instances JSON: read into :class:`DetectionData`, and write back with the user's ids.

Category ids of any kind (COCO's sparse 1..90, or 0-based, or arbitrary) become contiguous
labels ``0..K-1`` in sorted id order; ``label_to_category_id`` maps them back. ``bbox`` is
``[x, y, w, h]`` in pixels and becomes ``xyxy``. ``iscrowd`` boxes are kept aside as
``crowd_boxes`` and are not training targets.

Roboflow's COCO exports declare one extra category, id 0, named after the project, that is
the ``supercategory`` of every other category and has no boxes; it is dropped (recorded as
``supercategory_dropped``) rather than trained as an empty class. When the images are not
where ``file_name`` says (relative to the JSON file's folder by default), the usual places
are searched (see :mod:`efficientdet.data.locate`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .locate import all_present, find_image_dir
from .sample import (
    DataError,
    DetectionData,
    DetectionSample,
    IssueLog,
    is_finite_number,
    is_image_side,
    make_sample,
    read_image_size,
    where,
)

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read annotation file: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        message = f"{where(path, err.lineno)}: malformed JSON (column {err.colno}): {err.msg}"
        raise DataError(message) from err


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_categories(
    path: Path, categories: list[Any], issues: IssueLog
) -> tuple[list[int], list[str], dict[int, str | None]]:
    names_by_id: dict[int, str] = {}
    super_by_id: dict[int, str | None] = {}
    for i, cat in enumerate(categories):
        ctx = f"{path}: categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            issues.add("invalid_annotation", f"{ctx}: needs an integer 'id', got {cat!r:.80}")
            continue
        cid = cat["id"]
        if cid in names_by_id:
            issues.add("duplicate_category_id", f"{ctx}: category id {cid} is declared twice")
            continue
        names_by_id[cid] = str(cat.get("name", cid))
        sup = cat.get("supercategory")
        super_by_id[cid] = str(sup) if sup is not None else None
    ids = sorted(names_by_id)
    return ids, [names_by_id[c] for c in ids], super_by_id


def _umbrella_category(
    ids: list[int], names: list[str], super_by_id: dict[int, str | None], used: set[int]
) -> int | None:
    """The id of a category without annotations that is the supercategory of every other
    category (Roboflow's project-named category 0), or None."""
    if len(ids) < 2:
        return None
    for cid, name in zip(ids, names, strict=True):
        others = [c for c in ids if c != cid]
        if cid not in used and all(super_by_id.get(c) == name for c in others):
            return cid
    return None


def _read_bbox(value: Any, ctx: str, issues: IssueLog) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        issues.add("invalid_annotation", f"{ctx}: 'bbox' must be [x, y, w, h], got {value!r:.80}")
        return None
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            issues.add("invalid_annotation", f"{ctx}: 'bbox' has a non-numeric value {v!r:.40}")
            return None
        if not is_finite_number(v):
            issues.add("invalid_annotation", f"{ctx}: 'bbox' has a non-finite value {v!r:.40}")
            return None
    x, y, w, h = (float(v) for v in value)
    return [x, y, x + w, y + h]


def load_coco(
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    strict: bool = True,
    check_files: bool = True,
    min_size: float = 1.0,
    split: str | None = None,
) -> DetectionData:
    """Read a COCO instances JSON file.

    Args:
        annotation_file: the ``.json`` file.
        image_dir: folder that ``file_name`` is relative to; default the JSON file's folder,
            or, when the listed images are not there, the one folder among the usual places
            (:func:`efficientdet.data.locate.find_image_dir`) that holds them all; its use
            is recorded as ``images_found_elsewhere`` and logged. A given ``image_dir`` is
            never replaced; when the images are not in it, what the search found is
            recorded as ``images_not_located``.
        strict: raise :class:`DataError` listing the fatal problems (malformed values,
            conflicting duplicate ids) after reading; with False they are only recorded in
            ``issues`` and the offending entries skipped.
        check_files: skip (and count) images whose file does not exist.
        min_size: boxes narrower or shorter than this many pixels after clipping are dropped.
        split: the split this file is read as; only used to word the data-file line in the
            messages about image folders.

    Returns:
        :class:`DetectionData` with one sample per image, in file order. Images without
        ``width``/``height`` (or with values that are not positive integers of at most
        ``2**31 - 1``) get their size from the image header.

    Raises:
        DataError: the file cannot be read, is not JSON (with line and column), lacks the
            ``images``/``categories`` lists, or (when strict) has fatal problems.
    """
    path = Path(annotation_file)
    root = Path(image_dir) if image_dir is not None else path.parent
    doc, annotations = _read_document(path)
    issues = IssueLog()
    category_ids, class_names = _read_classes(path, doc["categories"], annotations, issues)
    images = _read_images_section(path, doc["images"], issues)
    per_image = _group_annotations(path, annotations, images, category_ids, issues)
    if check_files:
        root = _locate_images(path, root, image_dir is not None, images, issues, split)
    samples = _make_samples(path, root, images, per_image, check_files, min_size, issues)
    if strict:
        issues.raise_if_fatal(path)
    return DetectionData(
        samples=samples,
        class_names=class_names,
        label_to_category_id=category_ids,
        format="coco",
        source=path,
        issues=issues,
    )


def _read_document(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """The parsed file and its ``annotations`` list (empty when absent), after checking that
    it is an object with ``images`` and ``categories`` lists."""
    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'categories'")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: missing the '{key}' list of a COCO instances file")
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return doc, annotations


def _read_classes(
    path: Path, categories: list[Any], annotations: list[Any], issues: IssueLog
) -> tuple[list[int], list[str]]:
    """The category ids in sorted order and their names (the labels ``0..K-1``), without
    an umbrella category that has no annotations (recorded as ``supercategory_dropped``)."""
    category_ids, class_names, super_by_id = _read_categories(path, categories, issues)
    used: set[int] = {
        a["category_id"]
        for a in annotations
        if isinstance(a, dict) and _is_int(a.get("category_id"))
    }
    umbrella = _umbrella_category(category_ids, class_names, super_by_id, used)
    if umbrella is not None:
        k = category_ids.index(umbrella)
        name = class_names.pop(k)
        category_ids.pop(k)
        issues.add(
            "supercategory_dropped",
            f"{path}: category id {umbrella} ({name!r}) has no annotations and is the "
            f"supercategory of all {len(category_ids)} others (as Roboflow exports write it); "
            f"dropped, the classes are {class_names[:20]} with ids {category_ids[:20]}",
        )
    return category_ids, class_names


def _read_images_section(
    path: Path, entries: list[Any], issues: IssueLog
) -> dict[int, tuple[str, tuple[int, int] | None]]:
    """Image id -> (file_name, ``(height, width)`` or None when not given as valid sides),
    in file order; malformed and duplicate entries are recorded and skipped."""
    images: dict[int, tuple[str, tuple[int, int] | None]] = {}
    for i, img in enumerate(entries):
        ctx = f"{path}: images[{i}]"
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            issues.add("invalid_annotation", f"{ctx}: needs an integer 'id', got {img!r:.80}")
            continue
        if not isinstance(img.get("file_name"), str):
            issues.add("invalid_annotation", f"{ctx} (id {img['id']}): needs a 'file_name'")
            continue
        image_id, file_name = img["id"], img["file_name"]
        if image_id in images:
            if images[image_id][0] == file_name:
                issues.add("duplicate_image", f"{ctx}: image id {image_id} listed twice")
            else:
                issues.add(
                    "duplicate_image_id",
                    f"{ctx}: image id {image_id} names both {images[image_id][0]!r} "
                    f"and {file_name!r}",
                )
            continue
        width, height = img.get("width"), img.get("height")
        size: tuple[int, int] | None = None
        if isinstance(width, int) and isinstance(height, int) and is_image_side(width) and is_image_side(height):
            size = (height, width)
        images[image_id] = (file_name, size)
    return images


def _group_annotations(
    path: Path,
    annotations: list[Any],
    images: dict[int, tuple[str, tuple[int, int] | None]],
    category_ids: list[int],
    issues: IssueLog,
) -> dict[int, dict[str, list]]:
    """Per image id, the xyxy ``boxes`` and ``labels`` and the ``crowd`` boxes and
    ``crowd_labels``; annotations that cannot be placed are recorded and skipped."""
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    per_image: dict[int, dict[str, list]] = {
        k: {"boxes": [], "labels": [], "crowd": [], "crowd_labels": []} for k in images
    }
    seen_ann_ids: set[Any] = set()
    for i, ann in enumerate(annotations):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        ctx = f"{path}: annotations[{i}] (id {ann_id})"
        if not isinstance(ann, dict):
            issues.add("invalid_annotation", f"{ctx}: expected an object, got {ann!r:.80}")
            continue
        if isinstance(ann_id, (int, str)):
            if ann_id in seen_ann_ids:
                issues.add("duplicate_annotation_id", f"{ctx}: annotation id used twice")
            seen_ann_ids.add(ann_id)
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not _is_int(category_id):
            issues.add("invalid_annotation", f"{ctx}: 'category_id' must be an integer")
            continue
        if category_id not in label_of:
            issues.add(
                "unknown_category",
                f"{ctx}: category_id {category_id} is not in 'categories' "
                f"(declared: {category_ids[:20]})",
            )
            continue
        if not _is_int(image_id) or image_id not in per_image:  # a list or dict is unhashable
            issues.add("unknown_image_id", f"{ctx}: image_id {image_id!r:.40} is not in 'images'")
            continue
        box = _read_bbox(ann.get("bbox"), ctx, issues)
        if box is None:
            continue
        bucket = per_image[image_id]
        if ann.get("iscrowd", 0):
            bucket["crowd"].append(box)
            bucket["crowd_labels"].append(label_of[category_id])
        else:
            bucket["boxes"].append(box)
            bucket["labels"].append(label_of[category_id])
    return per_image


def _make_samples(
    path: Path,
    root: Path,
    images: dict[int, tuple[str, tuple[int, int] | None]],
    per_image: dict[int, dict[str, list]],
    check_files: bool,
    min_size: float,
    issues: IssueLog,
) -> list[DetectionSample]:
    """One sample per image under ``root``, in file order; missing files (when checked) and
    images whose size can be neither read from the file nor the header are skipped."""
    samples = []
    for image_id, (file_name, size) in images.items():
        image_path = root / file_name
        ctx = f"{path}: image {image_id} ({file_name})"
        if check_files and not image_path.is_file():
            issues.add("missing_image", f"{ctx}: file not found at {image_path}")
            continue
        if size is None:
            try:
                size = read_image_size(image_path)
            except (FileNotFoundError, DataError) as err:
                issues.add("unreadable_image", f"{ctx}: no width/height and {err}")
                continue
        bucket = per_image[image_id]
        samples.append(
            make_sample(
                image_path=image_path,
                image_id=image_id,
                size=size,
                boxes=bucket["boxes"],
                labels=bucket["labels"],
                crowd_boxes=bucket["crowd"],
                crowd_labels=bucket["crowd_labels"],
                issues=issues,
                context=ctx,
                min_size=min_size,
            )
        )
    return samples


def _locate_images(
    path: Path,
    root: Path,
    given: bool,
    images: dict[int, tuple[str, tuple[int, int] | None]],
    issues: IssueLog,
    split: str | None,
) -> Path:
    """The folder ``file_name`` is relative to: ``root`` when it holds the (sampled) images,
    else the single usual place that does (recorded); ``root`` again when none or several do
    (what was found is recorded)."""
    names = [name for name, _ in images.values()]
    if not names or all_present(root, names):
        return root
    search = find_image_dir(path, names)
    message = search.describe(root, split)
    chosen = search.chosen
    if chosen is not None and not given:
        issues.add("images_found_elsewhere", message)
        log.warning("%s", message)
        return chosen
    if given and chosen is not None:
        message = message.replace("which is used", "which is not used (images were given)")
    issues.add("images_not_located", message)
    return root


def _file_name(image_path: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return image_path.relative_to(relative_to).as_posix()
        except ValueError:
            pass
    return image_path.as_posix()


def coco_dict(data: DetectionData, relative_to: str | Path | None = None) -> dict[str, Any]:
    """The dataset as a COCO instances dict, with the user's category ids.

    Boxes are the (clipped) training boxes; crowd boxes are written with ``iscrowd: 1``;
    VOC's difficult flag is written as an extra ``difficult`` field. ``area`` is the box
    area. ``file_name`` is relative to ``relative_to`` where possible, else absolute.
    Useful as ground truth for pycocotools on VOC or YOLO data.

    Returns:
        ``{"images", "annotations", "categories"}`` with annotation ids ``1..``.
    """
    base = Path(relative_to) if relative_to is not None else None
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for sample in data.samples:
        images.append(
            {
                "id": sample.image_id,
                "file_name": _file_name(sample.image_path, base),
                "height": sample.height,
                "width": sample.width,
            }
        )
        entries = [
            (b, lab, 0, d)
            for b, lab, d in zip(sample.boxes, sample.labels, sample.difficult, strict=True)
        ]
        entries += [
            (b, lab, 1, False)
            for b, lab in zip(sample.crowd_boxes, sample.crowd_labels, strict=True)
        ]
        for box, label, crowd, difficult in entries:
            x0, y0, x1, y1 = (float(v) for v in box)
            ann = {
                "id": len(annotations) + 1,
                "image_id": sample.image_id,
                "category_id": data.label_to_category_id[int(label)],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": crowd,
            }
            if difficult:
                ann["difficult"] = 1
            annotations.append(ann)
    categories = [
        {"id": cid, "name": name}
        for cid, name in zip(data.label_to_category_id, data.class_names, strict=True)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(data: DetectionData, path: str | Path) -> Path:
    """Write :func:`coco_dict` to ``path`` with ``file_name`` relative to its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = coco_dict(data, relative_to=path.parent)
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return path
