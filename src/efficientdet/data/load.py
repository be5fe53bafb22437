"""``load_dataset``: detect the annotation format of a path and read one split.

Rules, in order:

* a ``.json`` file -> COCO (images relative to the file's folder);
* a ``.yaml``/``.yml`` file, or a folder holding ``data.yaml``/``dataset.yaml`` -> the YAML
  data file below;
* a folder with ``Annotations/`` -> Pascal VOC (``ImageSets/Main/{split}.txt`` when that
  folder exists, else every annotation file);
* a folder with ``labels/`` (or ``{split}/labels/``), or an ``images`` folder with a sibling
  ``labels`` folder -> YOLO;
* a folder with ``annotations_{split}.json`` or ``annotations/instances_{split}[2017].json``
  -> COCO.

YAML data file (paths relative to ``path``, itself relative to the YAML file's folder)::

    path: .                       # optional dataset root
    format: coco                  # optional: coco | voc | yolo; detected per entry otherwise
    train: annotations_train.json # COCO JSON, a YOLO images folder, or a VOC root
    val: {annotations: annotations/instances_val.json, images: val2017}  # COCO + image folder
    names: ["cat", "dog"]         # list or {index: name}; used by VOC and YOLO

A VOC entry may also be ``{root: VOC2012, split: trainval}``; a plain VOC folder entry uses
the YAML key (``train``, ``val``) as the split name when ``ImageSets/Main`` has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .coco import load_coco
from .sample import DataError, DetectionData
from .voc import load_voc
from .yolo import load_yolo, names_from_yaml_value, yolo_folders

FORMATS = ("coco", "voc", "yolo")
YAML_NAMES = ("data.yaml", "dataset.yaml")
SPLIT_ALIASES = {"val": ("valid", "validation"), "test": ("testing",)}


def _check_format(value: str | None, source: str | Path) -> None:
    if value is not None and value not in FORMATS:
        raise DataError(f"{source}: format {value!r} is not one of {', '.join(FORMATS)}")


def _coco_in_folder(root: Path, split: str) -> Path | None:
    for candidate in (
        root / f"annotations_{split}.json",
        root / "annotations" / f"instances_{split}.json",
        root / "annotations" / f"instances_{split}2017.json",
    ):
        if candidate.is_file():
            return candidate
    return None


def detect_format(path: str | Path, split: str = "train") -> str:
    """``"coco"``, ``"voc"``, ``"yolo"`` or ``"yaml"`` for a path (see the module rules).

    Raises:
        DataError: the path does not exist or matches no rule.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yaml"
        raise DataError(f"{path}: expected a COCO .json or a YAML data file, not {path.suffix!r}")
    if any((path / name).is_file() for name in YAML_NAMES):
        return "yaml"
    if (path / "Annotations").is_dir():
        return "voc"
    try:
        yolo_folders(path, split)
        return "yolo"
    except DataError:
        pass
    if _coco_in_folder(path, split) is not None:
        return "coco"
    raise DataError(
        f"{path}: cannot tell the dataset format. Expected a COCO .json file, a YAML data file "
        "(data.yaml), a folder with Annotations/ (Pascal VOC), or a folder with images/ and "
        f"labels/ (YOLO), or a folder with annotations_{split}.json (COCO)"
    )


def _load_yaml(
    path: Path, split: str, class_names: list[str] | None, strict: bool, min_size: float
) -> DetectionData:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{line}: malformed YAML: {err}") from err
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with split entries such as 'train'")
    fmt = doc.get("format")
    _check_format(fmt, path)
    root = path.parent / str(doc.get("path", "."))
    key = split
    if key not in doc:
        key = next((a for a in SPLIT_ALIASES.get(split, ()) if a in doc), split)
    if key not in doc or doc[key] is None:
        splits = [k for k in doc if k not in ("path", "format", "names", "nc", "download")]
        raise DataError(f"{path}: no split {split!r}; entries: {splits}")
    if class_names is None and "names" in doc:
        class_names = names_from_yaml_value(doc["names"], path)
    entry: Any = doc[key]
    kwargs: dict[str, Any] = {"strict": strict, "min_size": min_size}
    if isinstance(entry, dict):
        if "annotations" in entry:
            images = entry.get("images")
            return load_coco(
                root / str(entry["annotations"]),
                root / str(images) if images is not None else None,
                **kwargs,
            )
        if "root" in entry:
            return load_voc(
                root / str(entry["root"]), entry.get("split"), class_names=class_names, **kwargs
            )
        raise DataError(f"{path}: entry {key!r} needs 'annotations' (COCO) or 'root' (VOC)")
    if not isinstance(entry, str):
        raise DataError(f"{path}: entry {key!r} must be a path or a mapping, got {entry!r:.60}")
    target = root / entry
    detected = fmt or detect_format(target, split)
    if detected == "yaml":
        raise DataError(f"{path}: entry {key!r} points at another YAML file: {target}")
    if detected == "coco":
        json_path = target if target.is_file() else _coco_in_folder(target, split)
        return load_coco(json_path or target, **kwargs)
    if detected == "voc":
        sets = target / "ImageSets" / "Main"
        voc_split = key if (sets / f"{key}.txt").is_file() else None
        return load_voc(target, voc_split, class_names=class_names, **kwargs)
    return load_yolo(target, split, class_names=class_names, **kwargs)


def load_dataset(
    path: str | Path,
    split: str = "train",
    *,
    class_names: list[str] | None = None,
    strict: bool = True,
    min_size: float = 1.0,
) -> DetectionData:
    """Read one split of a dataset in any supported format, detected from ``path``.

    Args:
        path: a COCO ``.json``, a YAML data file, or a VOC / YOLO / COCO folder.
        split: the split to read (``"train"``, ``"val"``, ...); ignored for a ``.json`` file.
            A folder without splits (VOC without ``ImageSets/Main``, flat YOLO
            ``images/``) is read whole whatever the split.
        class_names: class table for VOC and YOLO (COCO's come from its categories).
        strict: raise on fatal annotation problems; False records them and goes on (what
            :func:`efficientdet.data.check.check_dataset` uses).
        min_size: boxes narrower or shorter than this many pixels after clipping are dropped.

    Returns:
        :class:`DetectionData` with clipped, non-degenerate boxes and the issue counts.

    Raises:
        DataError: unknown format, missing split, unreadable files or fatal problems.
    """
    path = Path(path)
    fmt = detect_format(path, split)
    kwargs: dict[str, Any] = {"strict": strict, "min_size": min_size}
    if fmt == "yaml":
        yaml_path = (
            path if path.is_file() else next(path / n for n in YAML_NAMES if (path / n).is_file())
        )
        return _load_yaml(yaml_path, split, class_names, strict, min_size)
    if fmt == "coco":
        json_path = path if path.is_file() else _coco_in_folder(path, split)
        return load_coco(json_path or path, **kwargs)
    if fmt == "voc":
        voc_split = split if (path / "ImageSets" / "Main").is_dir() else None
        return load_voc(path, voc_split, class_names=class_names, **kwargs)
    return load_yolo(path, split, class_names=class_names, **kwargs)
