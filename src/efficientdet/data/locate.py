"""Finding images that are not where the annotations say, and split names as tools spell them.

A COCO file's ``file_name`` is relative to a folder the file does not name. By default it is
the JSON file's own folder, but the common layouts put the images elsewhere:

* ``annotations/instances_val2017.json`` + ``val2017/`` (the COCO download);
* ``annotations/instances_default.json`` + ``images/default/`` (CVAT "COCO 1.0");
* ``annotations.json`` + ``images/`` (supervision's ``as_coco`` with those names).

:func:`find_image_dir` checks the usual places (the JSON's folder, its ``images/`` and
``<subset>/`` sub-folders, and the same under the dataset root above an ``annotations/``
folder) for a sample of the listed files and reports what it found, with the one line of a
YAML data file that states the folder. The readers use a folder only when it is the single
one holding every sampled image, and record that they did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Other spellings of a split name in tools' exports (Roboflow writes train/valid/test).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "val": ("valid", "validation"),
    "test": ("testing",),
}
# The subset name CVAT gives a task exported without subsets.
DEFAULT_SUBSET = "default"
# How many listed file names are checked per candidate folder.
SAMPLE_SIZE = 200


def split_names(split: str) -> list[str]:
    """``split`` followed by its other spellings: ``"val"`` -> ``["val", "valid", "validation"]``."""
    names = [split, *SPLIT_ALIASES.get(split, ())]
    for canonical, aliases in SPLIT_ALIASES.items():
        if split in aliases:
            names += [canonical, *(a for a in aliases if a != split)]
    return names


def subset_of(annotation_file: Path) -> str | None:
    """The subset a COCO file names: ``instances_val2017.json`` -> ``"val2017"``; None if none."""
    stem = annotation_file.stem
    for prefix in ("instances_", "annotations_"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    return None


def split_of_subset(subset: str | None) -> str:
    """The split key a subset belongs under in a data file: ``"val2017"`` -> ``"val"``."""
    if subset is None:
        return "train"
    name = subset.lower().removesuffix("2017").removesuffix("2014")
    for candidate in ("train", "val", "test"):
        if name in split_names(candidate):
            return candidate
    return "train"


@dataclass
class ImageDirSearch:
    """What :func:`find_image_dir` found.

    Attributes:
        annotation_file: the COCO file whose ``file_name`` entries were looked up.
        checked: how many file names were checked (a sample of at most ``SAMPLE_SIZE``).
        found: ``(folder, how many of the checked files it holds)`` for every candidate
            holding at least one, most first.
        tried: every existing folder that was looked in.
    """

    annotation_file: Path
    checked: int
    found: list[tuple[Path, int]] = field(default_factory=list)
    tried: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> list[Path]:
        """The folders holding every checked file."""
        return [folder for folder, count in self.found if count == self.checked]

    @property
    def chosen(self) -> Path | None:
        """The folder to use: the only one holding every checked file, else None."""
        complete = self.complete
        return complete[0] if len(complete) == 1 else None

    def yaml_line(self, images: Path, split: str | None = None) -> tuple[Path, str]:
        """``(data file, line)``: where a YAML data file would go (the folder above both the
        annotation file and ``images``) and the entry that names both."""
        ann = self.annotation_file.absolute()
        root = Path(os.path.commonpath([ann.parent, images.absolute()]))
        key = split or split_of_subset(subset_of(ann))
        ann_rel = ann.relative_to(root).as_posix()
        img_rel = images.absolute().relative_to(root).as_posix() or "."
        return root / "data.yaml", f"{key}: {{annotations: {ann_rel}, images: {img_rel}}}"

    def describe(self, default_dir: Path, split: str | None = None) -> str:
        """One message: where the images were expected, what was found, the fix."""
        head = (
            f"{self.annotation_file}: the images are not in {default_dir}, the folder its "
            f"'file_name' entries are read relative to; of {self.checked} listed file(s) checked"
        )
        chosen = self.chosen
        if chosen is not None:
            data_file, line = self.yaml_line(chosen, split)
            return (
                f"{head}, all are in {chosen}, which is used. To state it, write in "
                f"{data_file}:  {line}"
            )
        complete = self.complete
        if complete:
            data_file, line = self.yaml_line(complete[0], split)
            others = ", ".join(str(p) for p in complete)
            return (
                f"{head}, every one is in each of {len(complete)} folders ({others}); none is "
                f"chosen. Name one, e.g. in {data_file}:  {line}"
            )
        tried = ", ".join(str(p) for p in self.tried) or "no existing folder"
        if self.found:
            best, count = self.found[0]
            data_file, line = self.yaml_line(best, split)
            return (
                f"{head}, no folder holds them all (looked in {tried}); the most, {count}, "
                f"are in {best}. If that is the folder, write in {data_file}:  {line}"
            )
        return f"{head}, none was found (looked in {tried})"


def image_dir_candidates(annotation_file: Path) -> list[Path]:
    """Existing folders where a COCO file's images usually are, the JSON's folder first."""
    folder = annotation_file.parent
    subset = subset_of(annotation_file)
    subsets = [subset] if subset else []
    if subset and not subset[-4:].isdigit():
        subsets.append(f"{subset}2017")  # instances_val.json beside val2017/
    bases = [folder]
    if folder.name.lower() == "annotations":
        bases.append(folder.parent)
    candidates: list[Path] = []
    for base in bases:
        candidates.append(base)
        candidates += [base / s for s in subsets]
        candidates.append(base / "images")
        candidates += [base / "images" / s for s in subsets]
    return [c for c in dict.fromkeys(candidates) if c.is_dir()]


def find_image_dir(annotation_file: str | Path, file_names: Sequence[str]) -> ImageDirSearch:
    """Look for the folder that ``file_names`` (a COCO file's entries) are relative to.

    Checks the first ``SAMPLE_SIZE`` names in each of :func:`image_dir_candidates`.
    """
    annotation_file = Path(annotation_file)
    sample = list(file_names[:SAMPLE_SIZE])
    search = ImageDirSearch(annotation_file=annotation_file, checked=len(sample))
    for folder in image_dir_candidates(annotation_file):
        search.tried.append(folder)
        count = sum((folder / name).is_file() for name in sample)
        if count:
            search.found.append((folder, count))
    search.found.sort(key=lambda item: -item[1])
    return search


def all_present(folder: Path, file_names: Sequence[str]) -> bool:
    """Whether the first ``SAMPLE_SIZE`` of ``file_names`` exist under ``folder``."""
    return all((folder / name).is_file() for name in file_names[:SAMPLE_SIZE])
