"""``load_dataset``: detect the annotation format of a path and read one split.

Rules, in order (a split ``s`` also matches its other spellings, ``valid`` for ``val``):

* a ``.json`` file -> COCO (images relative to the file's folder, else found in the usual
  places, see :mod:`efficientdet.data.locate`);
* a ``.yaml``/``.yml`` file, or a folder holding ``data.yaml``/``dataset.yaml`` -> the YAML
  data file below;
* a folder with ``obj.data`` -> darknet YOLO (CVAT "YOLO 1.1": ``obj.names``,
  ``train.txt``/``valid.txt`` listing images with their label files beside them);
* a Pascal VOC folder: ``Annotations/`` (``ImageSets/Main/{s}.txt`` when that folder exists,
  else every annotation file), ``annotations/`` with ``.xml`` files next to ``images/``, or
  ``.xml`` files beside the images in the folder itself or in its ``{s}/`` sub-folder
  (Roboflow);
* a folder with ``labels/`` (or ``{s}/labels/``), or an ``images`` folder with a sibling
  ``labels`` folder -> YOLO;
* a folder with ``annotations_{s}.json``, ``annotations/instances_{s}[2017].json`` or
  ``{s}/_annotations.coco.json`` (Roboflow), or ``_annotations.coco.json`` itself -> COCO.

A tool's export without subsets (CVAT names its one subset ``default``:
``instances_default.json``, ``ImageSets/Main/default.txt``) is read for the ``train`` split,
recorded as ``split_substituted``.

YAML data file (paths relative to ``path``, itself relative to the YAML file's folder)::

    path: .                       # optional dataset root
    format: coco                  # optional: coco | voc | yolo; detected per entry otherwise
    train: annotations_train.json # COCO JSON, a YOLO images folder, or a VOC root
    val: {annotations: annotations/instances_val.json, images: val2017}  # COCO + image folder
    names: ["cat", "dog"]         # list or {index: name}; used by VOC and YOLO

As in Ultralytics, a split entry may also be a ``.txt`` file listing image paths or a list
of folders and such files (YOLO), and a relative entry starting with ``../`` that does not
exist is taken without the ``../`` (Roboflow's ``train: ../train/images`` beside the YAML).
A YAML file with ``names`` (or ``nc``) and no split entries, as supervision's ``as_yolo``
writes it, describes the YOLO folder it sits in.

A VOC entry may also be ``{root: VOC2012, split: trainval}``; a plain VOC folder entry uses
the YAML key (``train``, ``val``) as the split name when ``ImageSets/Main`` has it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from .coco import load_coco
from .locate import DEFAULT_SUBSET, split_names
from .sample import IMAGE_EXTENSIONS, DataError, DetectionData
from .voc import has_xml, load_voc, voc_folders
from .yolo import (
    load_yolo,
    load_yolo_sources,
    names_from_yaml_value,
    read_class_names,
    resolve_listed,
    yolo_folders,
)

log = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "yolo")
YAML_NAMES = ("data.yaml", "dataset.yaml")
# Keys of a YAML data file that are not split entries.
NON_SPLIT_KEYS = (
    "path", "format", "names", "nc", "download", "roboflow", "kpt_shape", "flip_idx", "channels",
)
ROBOFLOW_COCO = "_annotations.coco.json"
DARKNET_DATA = "obj.data"


def _check_format(value: str | None, source: str | Path) -> None:
    if value is not None and value not in FORMATS:
        raise DataError(f"{source}: format {value!r} is not one of {', '.join(FORMATS)}")


def _note(data: DetectionData, kind: str, message: str) -> DetectionData:
    data.issues.add(kind, message)
    log.warning("%s", message)
    return data


def _coco_in_folder(root: Path, split: str) -> Path | None:
    for name in split_names(split):
        for candidate in (
            root / f"annotations_{name}.json",
            root / "annotations" / f"instances_{name}.json",
            root / "annotations" / f"instances_{name}2017.json",
            root / name / ROBOFLOW_COCO,
        ):
            if candidate.is_file():
                return candidate
    if (root / ROBOFLOW_COCO).is_file():
        return root / ROBOFLOW_COCO
    return None


def _default_coco(root: Path, split: str) -> Path | None:
    """CVAT's ``annotations/instances_default.json``, used for the train split only."""
    candidate = root / "annotations" / f"instances_{DEFAULT_SUBSET}.json"
    return candidate if split == "train" and candidate.is_file() else None


def _voc_root(path: Path, split: str) -> Path | None:
    """The VOC folder to read for ``split``: ``path`` itself or its ``{split}/`` sub-folder
    holding ``.xml`` files (Roboflow); None when ``path`` is no VOC folder."""
    try:
        voc_folders(path)
        return path
    except DataError:
        pass
    for name in split_names(split):
        if has_xml(path / name):
            return path / name
    return None


def _detect_folder(path: Path, split: str, allow_yaml: bool = True) -> str:
    if allow_yaml and any((path / name).is_file() for name in YAML_NAMES):
        return "yaml"
    if (path / DARKNET_DATA).is_file():
        return "darknet"
    if _voc_root(path, split) is not None:
        return "voc"
    try:
        yolo_folders(path, split)
        return "yolo"
    except DataError:
        pass
    if _coco_in_folder(path, split) is not None or _default_coco(path, split) is not None:
        return "coco"
    subsets = sorted(p.name for p in (path / "annotations").glob("instances_*.json"))
    found = f"; found {subsets}, none for split {split!r}" if subsets else ""
    raise DataError(
        f"{path}: cannot tell the dataset format. Expected a COCO .json file, a YAML data file "
        "(data.yaml), a folder with Annotations/ (Pascal VOC), or a folder with images/ and "
        f"labels/ (YOLO), or a folder with annotations_{split}.json or "
        f"annotations/instances_{split}.json (COCO){found}"
    )


def detect_format(path: str | Path, split: str = "train") -> str:
    """``"coco"``, ``"voc"``, ``"yolo"``, ``"darknet"`` or ``"yaml"`` for a path (see the
    module rules).

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
    return _detect_folder(path, split)


def _voc_split(root: Path, split: str) -> tuple[str | None, str | None]:
    """``(ImageSets/Main split name or None for every file, note when substituted)``."""
    sets = root / "ImageSets" / "Main"
    if not sets.is_dir():
        return None, None
    for name in split_names(split):
        if (sets / f"{name}.txt").is_file():
            return name, None
    if split == "train" and (sets / f"{DEFAULT_SUBSET}.txt").is_file():
        note = (
            f"{sets}: no {split}.txt; reading {DEFAULT_SUBSET}.txt (the one subset of a CVAT "
            "export) as the train split"
        )
        return DEFAULT_SUBSET, note
    return split, None  # load_voc names the missing file and the splits there are


def _load_darknet(
    folder: Path, split: str, class_names: list[str] | None, kwargs: dict[str, Any]
) -> DetectionData:
    """A darknet ``obj.data`` (CVAT "YOLO 1.1"): ``train``/``valid`` name image lists."""
    obj = folder / DARKNET_DATA
    entries: dict[str, str] = {}
    for lineno, line in enumerate(obj.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"{obj}:{lineno}: expected 'key = value', got {line!r}")
        name, value = (part.strip() for part in line.split("=", 1))
        entries[name] = value
    key = next((k for k in split_names(split) if entries.get(k)), None)
    if key is None:
        lists = [k for k in entries if k not in ("classes", "names", "backup", "eval")]
        raise DataError(f"{obj}: no {split!r} image list; entries: {lists}")
    list_file = resolve_listed(entries[key], [folder])
    if not list_file.is_file():
        raise DataError(f"{obj}: {key} = {entries[key]}: no such file ({list_file})")
    if class_names is None and entries.get("names"):
        names_file = resolve_listed(entries["names"], [folder])
        if not names_file.is_file():
            raise DataError(f"{obj}: names = {entries['names']}: no such file ({names_file})")
        class_names = read_class_names(names_file)
    return load_yolo_sources([list_file], folder, class_names=class_names, **kwargs)


def _load_folder(
    path: Path,
    fmt: str,
    split: str,
    class_names: list[str] | None,
    kwargs: dict[str, Any],
) -> DetectionData:
    """Read ``split`` of a folder whose format :func:`_detect_folder` found."""
    if fmt == "yaml":
        yaml_path = next(path / n for n in YAML_NAMES if (path / n).is_file())
        return _load_yaml(yaml_path, split, class_names, kwargs)
    if fmt == "darknet":
        return _load_darknet(path, split, class_names, kwargs)
    if fmt == "coco":
        json_path = _coco_in_folder(path, split)
        if json_path is not None:
            return load_coco(json_path, split=split, **kwargs)
        default = _default_coco(path, split)
        if default is None:
            raise DataError(f"{path}: no COCO annotation file for split {split!r}")
        data = load_coco(default, split=split, **kwargs)
        return _note(
            data,
            "split_substituted",
            f"{default}: no instances_{split}.json; reading the {DEFAULT_SUBSET} subset (the one "
            "subset of a CVAT export) as the train split",
        )
    if fmt == "voc":
        root = _voc_root(path, split) or path
        voc_split, note = _voc_split(root, split)
        data = load_voc(root, voc_split, class_names=class_names, **kwargs)
        return _note(data, "split_substituted", note) if note else data
    return load_yolo(path, split, class_names=class_names, **kwargs)


def _resolve_entry(root: Path, entry: str, source: Path, key: str) -> Path:
    """An entry's path under ``root``; as Ultralytics does, a missing ``../x`` is ``x``."""
    target = root / entry
    if target.exists():
        return target
    if entry.startswith("../"):
        stripped = root / entry[3:]
        if stripped.exists():
            return stripped
        raise DataError(f"{source}: entry {key!r}: {entry} is neither at {target} nor at {stripped}")
    raise DataError(f"{source}: entry {key!r}: {target}: no such file or folder")


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def _load_yaml(
    path: Path, split: str, class_names: list[str] | None, kwargs: dict[str, Any]
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
    root = path.parent / str(doc.get("path") or ".")
    if class_names is None and "names" in doc:
        class_names = names_from_yaml_value(doc["names"], path)
    elif class_names is None and isinstance(doc.get("nc"), int) and doc["nc"] > 0:
        class_names = [str(i) for i in range(doc["nc"])]
    splits = [k for k in doc if k not in NON_SPLIT_KEYS]
    key = next((k for k in split_names(split) if doc.get(k) is not None), None)
    if key is None:
        if not splits and class_names is not None:
            # Only the class table (supervision's as_yolo): the YAML's folder is the dataset.
            detected = fmt or _detect_folder(root, split, allow_yaml=False)
            return _load_folder(root, detected, split, class_names, kwargs)
        raise DataError(f"{path}: no split {split!r}; entries: {splits}")
    entry: Any = doc[key]
    if isinstance(entry, dict):
        if "annotations" in entry:
            images = entry.get("images")
            return load_coco(
                root / str(entry["annotations"]),
                root / str(images) if images is not None else None,
                split=split,
                **kwargs,
            )
        if "root" in entry:
            return load_voc(
                root / str(entry["root"]), entry.get("split"), class_names=class_names, **kwargs
            )
        raise DataError(f"{path}: entry {key!r} needs 'annotations' (COCO) or 'root' (VOC)")
    if isinstance(entry, list):
        if fmt not in (None, "yolo") or not all(isinstance(e, str) for e in entry):
            raise DataError(f"{path}: entry {key!r}: a list must name YOLO image folders or lists")
        sources = [_resolve_entry(root, e, path, key) for e in entry]
        return load_yolo_sources(sources, root, class_names=class_names, **kwargs)
    if not isinstance(entry, str):
        raise DataError(f"{path}: entry {key!r} must be a path or a mapping, got {entry!r:.60}")
    target = _resolve_entry(root, entry, path, key)
    if target.is_file():
        suffix = target.suffix.lower()
        if suffix in (".yaml", ".yml"):
            raise DataError(f"{path}: entry {key!r} points at another YAML file: {target}")
        if suffix == ".txt" and fmt in (None, "yolo"):
            return load_yolo_sources([target], root, class_names=class_names, **kwargs)
        if suffix != ".json":
            raise DataError(
                f"{path}: entry {key!r}: expected a COCO .json, a YOLO .txt image list or a "
                f"folder, not {target}"
            )
        return load_coco(target, split=split, **kwargs)
    if fmt == "voc":
        voc_split = key if (target / "ImageSets" / "Main" / f"{key}.txt").is_file() else None
        return load_voc(target, voc_split, class_names=class_names, **kwargs)
    if fmt == "coco":
        return _load_folder(target, "coco", split, class_names, kwargs)
    try:
        detected = fmt or _detect_folder(target, split, allow_yaml=False)
    except DataError:
        if not _has_images(target):
            raise
        # An Ultralytics images folder whose label files sit beside the images.
        return load_yolo_sources([target], root, class_names=class_names, **kwargs)
    if detected == "voc":
        voc_root = _voc_root(target, split) or target
        sets = voc_root / "ImageSets" / "Main"
        voc_split = key if (sets / f"{key}.txt").is_file() else None
        return load_voc(voc_root, voc_split, class_names=class_names, **kwargs)
    return _load_folder(target, detected, split, class_names, kwargs)


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
        path: a COCO ``.json``, a YAML data file, or a VOC / YOLO / COCO / darknet folder
            (see the module rules for the layouts of the labelling tools' exports).
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
    if fmt == "yaml" and path.is_file():
        return _load_yaml(path, split, class_names, kwargs)
    if fmt == "coco" and path.is_file():
        return load_coco(path, **kwargs)  # the split a message suggests comes from the name
    return _load_folder(path, fmt, split, class_names, kwargs)
