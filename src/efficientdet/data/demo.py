"""The bundled demo data: "digit scenes", a small COCO-format detection dataset.

Real handwritten digits (scikit-learn's 1,797 8x8 digits, values 0..16) are upscaled
smoothly (bicubic), thresholded into soft-edged ink and alpha-blended onto crops of the
two real photographs that ship with scikit-learn (``china.jpg`` and ``flower.jpg``). Ten
classes named ``"0".."9"`` (category id = the digit). The box of a digit is the tight box of
its ink (pixels with alpha >= 0.5). Object sides run from ``min_object_size`` to
``max_object_size`` around a ``median_object_size`` (log-normal, plus a log-uniform share
so the extremes are populated); objects may overlap a little (at most ``MAX_OVERLAP`` of
either box). With the defaults (320 px images) the digits fall on P3-P6 by the nearest
anchor; scale jitter up to 2x in training puts the largest ones on P7.

The train and val splits draw from disjoint digit samples (a stratified split of the
1,797), so validation measures recognition of unseen handwriting. Generation is
deterministic: the same arguments give the same bytes (PNG files and JSON) on one machine.

Layout written under ``out_dir``::

    data.yaml                 # format: coco, train/val entries, names
    annotations_train.json    # COCO instances; file_name "train/000001.png"
    annotations_val.json
    train/000001.png ...
    val/000001.png ...
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
MAX_OVERLAP = 0.3  # largest share of either box that another digit may cover
_PLACEMENT_TRIES = 8
_SPLIT_CODES = {"train": 1, "val": 2}


@dataclass(frozen=True)
class DemoFiles:
    """Paths of a written demo dataset."""

    root: Path
    data_yaml: Path
    train_annotations: Path
    val_annotations: Path


def split_digit_indices(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, disjoint ``(train, val)`` indices into the digits, sorted.

    Args:
        targets: ``[1797]`` digit classes.
        val_fraction: share of each class given to validation.
    """
    rng = np.random.default_rng([seed, 0])
    train, val = [], []
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(targets == digit))
        n_val = max(1, round(len(indices) * val_fraction))
        val.append(indices[:n_val])
        train.append(indices[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _background(
    rng: np.random.Generator, photos: list[Image.Image], size: tuple[int, int]
) -> np.ndarray:
    """A random crop of a photo resized to ``size`` (h, w) with colour jitter; float [h, w, 3]."""
    h, w = size
    photo = photos[int(rng.integers(len(photos)))]
    pw, ph = photo.size
    max_cw = min(pw, ph * w / h)
    cw = max_cw * rng.uniform(0.3, 0.8)
    ch = cw * h / w
    x, y = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    crop = photo.resize((w, h), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(crop, dtype=np.float32) * (1.0 / 255.0)
    # Saturation s, contrast k about the mean m, brightness b in one affine map:
    # b * (k * (s * x + (1 - s) * grey) + (1 - k) * m).
    s, k, b = rng.uniform(0.2, 1.3), rng.uniform(0.6, 1.2), rng.uniform(0.75, 1.2)
    grey = arr.mean(axis=2, keepdims=True)
    arr *= b * k * s
    arr += b * k * (1.0 - s) * grey + b * (1.0 - k) * float(grey.mean())
    return np.clip(arr, 0.0, 1.0, out=arr)


def _object_side(
    rng: np.random.Generator, min_side: float, median: float, max_side: float
) -> float:
    if rng.random() < 0.15:
        side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
    else:
        side = float(median * np.exp(rng.normal(0.0, 0.5)))
    return float(np.clip(side, min_side, max_side))


def _digit_alpha(rng: np.random.Generator, digit: np.ndarray, side: float) -> np.ndarray:
    """Soft ink alpha ``[h, w]`` in 0..1 for an 8x8 digit drawn about ``side`` px tall."""
    cell = side / 8.0
    aspect = rng.uniform(0.8, 1.25)
    padded = np.pad(digit.astype(np.float32) / 16.0, 1)  # strokes fade out at the border
    out_w, out_h = max(3, round(10 * cell * aspect)), max(3, round(10 * cell))
    values = np.asarray(Image.fromarray(padded).resize((out_w, out_h), Image.Resampling.BICUBIC))
    threshold = rng.uniform(0.35, 0.6)  # stroke thickness
    sharpness = max(2.0, cell / 1.5)  # about 1.5 px of soft edge whatever the size
    return np.clip(0.5 + (values - threshold) * sharpness, 0.0, 1.0)


def _overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in placed:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        if inter > MAX_OVERLAP * area or inter > MAX_OVERLAP * (a1 - a0) * (b1 - b0):
            return False
    return True


def render_scene(
    rng: np.random.Generator,
    digits: np.ndarray,
    pool: np.ndarray,
    photos: list[Image.Image],
    *,
    image_size: int,
    max_objects: int,
    min_object_size: float,
    median_object_size: float,
    max_object_size: float,
) -> tuple[np.ndarray, list[tuple[tuple[int, int, int, int], int]]]:
    """One scene.

    Args:
        rng: the scene's generator.
        digits: ``[1797, 8, 8]`` digit images (0..16).
        pool: digit indices this split may use.
        photos: background photographs.
        image_size: the longer side; the shorter is 75-100 % of it.

    Returns:
        ``(image uint8 [h, w, 3], [(box xyxy with exclusive max, digit index), ...])``.
    """
    short = round(image_size * rng.uniform(0.75, 1.0))
    h, w = (short, image_size) if rng.random() < 0.5 else (image_size, short)
    canvas = _background(rng, photos, (h, w))
    objects: list[tuple[tuple[int, int, int, int], int]] = []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        for _ in range(_PLACEMENT_TRIES):
            index = int(pool[rng.integers(len(pool))])
            side = min(
                _object_side(rng, min_object_size, median_object_size, max_object_size),
                0.95 * min(h, w),
            )
            alpha = _digit_alpha(rng, digits[index], side)
            rows, cols = np.nonzero(alpha >= 0.5)
            if rows.size == 0:
                continue
            my0, my1, mx0, mx1 = rows.min(), rows.max(), cols.min(), cols.max()
            if mx1 - mx0 + 1 > w or my1 - my0 + 1 > h:
                continue
            # Canvas origin such that the ink lies inside the image.
            ox = int(rng.integers(-mx0, w - mx1))
            oy = int(rng.integers(-my0, h - my1))
            box = (int(ox + mx0), int(oy + my0), int(ox + mx1 + 1), int(oy + my1 + 1))
            if not _overlap_ok(box, [b for b, _ in objects]):
                continue
            # Paste the part of the digit canvas that falls inside the image.
            ah, aw = alpha.shape
            ix0, iy0 = max(ox, 0), max(oy, 0)
            ix1, iy1 = min(ox + aw, w), min(oy + ah, h)
            a = alpha[iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox, None]
            region = canvas[iy0:iy1, ix0:ix1]
            bright_background = float(region.mean()) > 0.5
            dark_ink = bright_background if rng.random() < 0.9 else not bright_background
            tint = rng.uniform(0.0, 1.0, 3)
            depth = rng.uniform(0.0, 0.4)
            colour = tint * depth if dark_ink else 1.0 - (1.0 - tint) * depth
            a = a * rng.uniform(0.7, 1.0)
            canvas[iy0:iy1, ix0:ix1] = region * (1.0 - a) + colour * a
            objects.append((box, index))
            break
    image = np.round(canvas * 255.0).astype(np.uint8)
    return image, objects


def _write_split(
    out_dir: Path,
    split: str,
    num_images: int,
    pool: np.ndarray,
    digits: np.ndarray,
    targets: np.ndarray,
    photos: list[Image.Image],
    seed: int,
    scene_args: dict[str, Any],
) -> Path:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        pixels, objects = render_scene(rng, digits, pool, photos, **scene_args)
        file_name = f"{split}/{i + 1:06d}.png"
        Image.fromarray(pixels).save(out_dir / file_name, format="PNG", compress_level=1)
        image_id = i + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": pixels.shape[0],
                "width": pixels.shape[1],
            }
        )
        for (x0, y0, x1, y1), index in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(targets[index]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "digit_index": index,
                }
            )
    doc = {
        "info": {"description": f"digit scenes ({split}), efficientdet demo data", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": d, "name": name, "supercategory": "digit"}
            for d, name in enumerate(DIGIT_CLASS_NAMES)
        ],
    }
    path = out_dir / f"annotations_{split}.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def write_demo_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 1600,
    num_val: int = 250,
    image_size: int = 320,
    max_objects: int = 12,
    min_object_size: float = 12.0,
    median_object_size: float | None = None,
    max_object_size: float | None = None,
    val_digit_fraction: float = 0.25,
) -> DemoFiles:
    """Write the "digit scenes" demo dataset (module docstring) and return its paths.

    Args:
        out_dir: folder to write into (created; existing files of the same names are
            overwritten).
        seed: everything is a function of the arguments; same seed, same bytes.
        num_train, num_val: images per split.
        image_size: the longer image side in pixels; the shorter is 75-100 % of it.
        max_objects: each image has 0..max_objects digits (fewer if they do not fit).
        min_object_size: smallest digit height in pixels.
        median_object_size: typical digit height; default ``0.22 * image_size``.
        max_object_size: largest digit height; default ``0.8 * image_size``.
        val_digit_fraction: share of each digit class reserved for validation.

    Returns:
        :class:`DemoFiles` with the dataset root, ``data.yaml`` and the two JSON files.
    """
    from sklearn.datasets import load_digits, load_sample_images

    if num_train < 0 or num_val < 0 or max_objects < 0:
        raise ValueError("num_train, num_val and max_objects must be >= 0")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    median = median_object_size if median_object_size is not None else 0.22 * image_size
    largest = max_object_size if max_object_size is not None else 0.8 * image_size
    if not 0 < min_object_size <= median <= largest:
        raise ValueError(
            "object sizes must satisfy 0 < min <= median <= max, got "
            f"{min_object_size}, {median}, {largest}"
        )
    if not 0.0 < val_digit_fraction < 1.0:
        raise ValueError(f"val_digit_fraction must be in (0, 1), got {val_digit_fraction}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digit_set = load_digits()
    digits, targets = digit_set.images, digit_set.target
    photos = [
        Image.fromarray(np.asarray(img, dtype=np.uint8)) for img in load_sample_images().images
    ]
    train_pool, val_pool = split_digit_indices(targets, val_digit_fraction, seed)
    scene_args = {
        "image_size": image_size,
        "max_objects": max_objects,
        "min_object_size": float(min_object_size),
        "median_object_size": float(median),
        "max_object_size": float(largest),
    }
    train_json = _write_split(
        out, "train", num_train, train_pool, digits, targets, photos, seed, scene_args
    )
    val_json = _write_split(
        out, "val", num_val, val_pool, digits, targets, photos, seed, scene_args
    )
    data_yaml = out / "data.yaml"
    description = {
        "format": "coco",
        "path": ".",
        "train": train_json.name,
        "val": val_json.name,
        "names": list(DIGIT_CLASS_NAMES),
        "nc": len(DIGIT_CLASS_NAMES),
    }
    header = (
        "# EfficientDet demo data: digit scenes (scikit-learn digits on scikit-learn photos).\n"
        f"# Written by efficientdet.data.demo.write_demo_dataset(seed={seed}, "
        f"num_train={num_train}, num_val={num_val}, image_size={image_size}).\n"
    )
    data_yaml.write_text(header + yaml.safe_dump(description, sort_keys=False), encoding="utf-8")
    return DemoFiles(
        root=out, data_yaml=data_yaml, train_annotations=train_json, val_annotations=val_json
    )


# What `make demo` trains on: 10 digit classes on photo crops, 1,600 + 200 images of 320 px.
DEMO_DATA_ARGS: dict[str, Any] = {"seed": 0, "num_train": 1600, "num_val": 200, "image_size": 320}


def prepare_demo_data(data_dir: Path, data_args: dict[str, Any] | None = None) -> DemoFiles:
    """Write the demo dataset unless the same one is already there (same arguments)."""
    args = data_args or DEMO_DATA_ARGS
    stamp = data_dir / "demo-args.json"
    wanted = json.dumps(args, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted and (data_dir / "data.yaml").is_file():
        return DemoFiles(
            data_dir, data_dir / "data.yaml", data_dir / "annotations_train.json",
            data_dir / "annotations_val.json",
        )
    if data_dir.exists():
        shutil.rmtree(data_dir)
    files = write_demo_dataset(data_dir, **args)
    stamp.write_text(wanted)
    return files
