"""Anchors fitted to the data against the model's own: matched share and AP after the same
short training, on generated datasets of tall thin boxes or tiny boxes.

    python benchmarks/anchor_fit_study.py --kind tall --steps 150 --out /tmp/anchor16

writes the dataset (COCO format, 3 classes of coloured bars on textured backgrounds), fits the
anchors as ``efficientdet check-data --fit-anchors`` does, trains the demo recipe
(:data:`efficientdet.train.recipes.DEMO_RECIPE`, Lite0 with its ImageNet backbone frozen and
cached) for ``--steps`` steps with the default anchors and with the fitted ones, and prints
the matched share and the validation AP of both.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import write_coco_split, write_data_yaml
from efficientdet.data import check_dataset
from efficientdet.detection.anchor_fit import fit_anchors, matched_share
from efficientdet.modeling.registry import get_config
from efficientdet.train import load_config, train
from efficientdet.train.recipes import DEMO_RECIPE

COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230))
CLASS_NAMES = ("red", "green", "blue")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random texture: low-resolution noise scaled up, plus fine noise."""
    coarse = rng.integers(60, 190, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(image.astype(np.int16) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


def _object_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    """(w, h) of one object in pixels of a 320 px image."""
    if kind == "tall":
        h = int(rng.uniform(50, 200))
        return max(4, int(h / rng.uniform(5.0, 8.0))), h
    side = rng.uniform(7, 15)
    aspect = rng.uniform(0.8, 1.25)
    return max(3, int(side * aspect)), max(3, int(side / aspect))


def write_bars_dataset(out: Path, kind: str, num_train: int, num_val: int, size: int = 320, seed: int = 0) -> Path:
    """Write ``out/{train,val}/*.png`` and COCO annotations; return the data.yaml path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        folder = out / split
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            pixels = _background(rng, size)
            for _ in range(int(rng.integers(2, 7 if kind == "tall" else 12))):
                w, h = _object_size(rng, kind)
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                label = int(rng.integers(0, 3))
                colour = np.array(COLOURS[label], dtype=np.int16)
                patch = colour + rng.integers(-25, 26, (h, w, 3))
                pixels[y : y + h, x : x + w] = np.clip(patch, 0, 255).astype(np.uint8)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                })
            name = f"{i:05d}.png"
            Image.fromarray(pixels).save(folder / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        write_coco_split(out, split, images, annotations, [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)])
    return write_data_yaml(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["tall", "tiny"], default="tall")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("/tmp/anchor16"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    data_yaml = write_bars_dataset(args.out / args.kind, args.kind, args.num_train, args.num_val)
    config = get_config("tf_efficientdet_lite0")
    size = config.image_size
    report = check_dataset(data_yaml, split="train", input_size=size, decode_images=False)
    levels = (config.min_level, config.max_level)
    fit = fit_anchors(report.boxes, size, *levels, config.anchors)
    val_boxes = check_dataset(data_yaml, split="val", input_size=size, decode_images=False).boxes
    rows = []
    for tag, label, anchors in (
        ("default", "model's anchors", config.anchors), ("fitted", "fitted anchors", fit.best)
    ):
        overrides = [
            *DEMO_RECIPE, f"run.max_steps={args.steps}", "run.eval_every=0",
            "run.progress=false", f"data.train={data_yaml}", f"data.val={data_yaml}",
            f"run.out_dir={args.out / f'{args.kind}-{tag}'}",
            f"model.anchor_scale={anchors.anchor_scale}",
            f"model.aspect_ratios={[list(r) for r in anchors.aspect_ratios]}",
        ]
        start = time.perf_counter()
        result = train(load_config(None, overrides))
        minutes = (time.perf_counter() - start) / 60
        rows.append((
            label, anchors.anchor_scale, anchors.aspect_ratios,
            matched_share(report.boxes, size, *levels, anchors),
            matched_share(val_boxes, size, *levels, anchors),
            result.metrics["AP"] if result.metrics else float("nan"),
            result.metrics["AP50"] if result.metrics else float("nan"), minutes,
        ))
    print(f"{args.kind}: {report.num_boxes} training boxes, input {size[0]}x{size[1]}, {args.steps} steps")
    print("| anchors | scale | aspect ratios (w, h) | matched (train) | matched (val) | AP | AP50 | train min |")
    print("|---|---|---|---|---|---|---|---|")
    for label, scale, ratios, share, vshare, ap, ap50, minutes in rows:
        text = ", ".join(f"({w:g}, {h:g})" for w, h in ratios)
        print(f"| {label} | {scale:g} | {text} | {100 * share:.1f}% | {100 * vshare:.1f}% | "
              f"{ap:.3f} | {ap50:.3f} | {minutes:.1f} |")
    for note in fit.advice:
        print("note:", note)


if __name__ == "__main__":
    main()
