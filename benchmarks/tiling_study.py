"""Tiled inference on large images with small objects: AP and time with and without tiles.

    python benchmarks/tiling_study.py --weights /tmp/runs16/demo/best.safetensors \
        --data /tmp/demo16/data.yaml --grid 3 --tile 320 --overlap 0.2

pastes the validation images of ``--data`` into ``grid x grid`` mosaics (a 3 x 3 mosaic of the
demo's 320 px scenes is 960 px, so the model's letterbox shrinks every digit 3x), writes them
with their boxes as a COCO dataset, and evaluates the detector on the mosaics as they are and
tiled (``efficientdet predict --tile``: tiles plus the whole image, merged), printing AP and
seconds per mosaic for each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from efficientdet.data import coco_dict, load_dataset
from efficientdet.detection.detector import Detector
from efficientdet.inference.evaluate import coco_evaluate, detections_to_coco
from efficientdet.inference.loading import load_model
from efficientdet.inference.tiling import tiled_predict_fn


def write_mosaics(data_yaml: Path, split: str, grid: int, out: Path) -> Path:
    """``grid x grid`` mosaics of the split's images (in order; leftovers dropped) as COCO."""
    data = load_dataset(data_yaml, split)
    out.mkdir(parents=True, exist_ok=True)
    per_mosaic = grid * grid
    images, annotations = [], []
    for m in range(len(data.samples) // per_mosaic):
        samples = data.samples[m * per_mosaic : (m + 1) * per_mosaic]
        cell_h = max(s.height for s in samples)
        cell_w = max(s.width for s in samples)
        mosaic = Image.new("RGB", (grid * cell_w, grid * cell_h))
        for k, sample in enumerate(samples):
            x0, y0 = (k % grid) * cell_w, (k // grid) * cell_h
            with Image.open(sample.image_path) as image:
                mosaic.paste(image.convert("RGB"), (x0, y0))
            for (x1, y1, x2, y2), label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": m + 1,
                    "category_id": data.label_to_category_id[label],
                    "bbox": [x1 + x0, y1 + y0, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                })
        name = f"mosaic{m:03d}.png"
        mosaic.save(out / name)
        images.append({"id": m + 1, "file_name": name, "width": mosaic.width, "height": mosaic.height})
    categories = [
        {"id": cid, "name": name}
        for cid, name in zip(data.label_to_category_id, data.class_names, strict=True)
    ]
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--tile", type=int, default=320)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tiling16"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    annotations = write_mosaics(args.data, args.split, args.grid, args.out)
    data = load_dataset(annotations, "train")
    loaded = load_model(args.weights)
    detector = Detector(loaded.model, score_threshold=0.001).eval()
    ground_truth = coco_dict(data)
    variants = {
        "whole image": detector.predict,
        f"tiles {args.tile} px, overlap {args.overlap:g}, NMS": tiled_predict_fn(
            detector.predict, tile=args.tile, overlap=args.overlap, merge="nms"
        ),
        f"tiles {args.tile} px, overlap {args.overlap:g}, WBF": tiled_predict_fn(
            detector.predict, tile=args.tile, overlap=args.overlap, merge="wbf"
        ),
    }
    size = f"{data.samples[0].width}x{data.samples[0].height}"
    print(f"{len(data.samples)} mosaics of {size}, {sum(s.num_boxes for s in data.samples)} boxes")
    print("| inference | AP | AP50 | AP small | s / image |")
    print("|---|---|---|---|---|")
    for label, predict in variants.items():
        detections = []
        start = time.perf_counter()
        for sample in data.samples:
            with Image.open(sample.image_path) as image:
                detections.extend(predict([image.convert("RGB")]))
        seconds = (time.perf_counter() - start) / len(data.samples)
        results = detections_to_coco(
            [s.image_id for s in data.samples], detections, data.label_to_category_id
        )
        m = coco_evaluate(ground_truth, results).metrics
        print(f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP_small']:.3f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
