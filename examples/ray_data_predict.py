"""Detect objects in a folder of images with Ray Data, on a local Ray cluster.

    python examples/ray_data_predict.py --weights best.safetensors photos/ --out runs/ray-pred

Ray reads the files, hands them in batches to a few detector actors (each loads the model once)
and writes one JSON Lines file per block into ``--out``: per image its path, size and
detections (boxes in the image's pixels, category ids, class names), as
``efficientdet predict`` writes them. Needs ``pip install 'efficientdet[ray]'``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import ray

from efficientdet.deploy.backends import build_predictor
from efficientdet.detection.transform import ImageReadError, load_image_bytes
from efficientdet.inference.predict import detection_records


class Detect:
    """A Ray actor: the detector, loaded once, applied to batches of encoded files."""

    def __init__(self, weights: str, score_threshold: float) -> None:
        self.predictor = build_predictor(weights, score_threshold=score_threshold, device="cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """``{"bytes": [B], "path": [B]}`` -> ``{"path", "width", "height", "detections",
        "error"}``, one row per file; an unreadable file keeps its row, with the reason."""
        images, rows = [], []
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            try:
                images.append(load_image_bytes(bytes(data), str(path)))
                rows.append({"path": str(path), "error": None})
            except ImageReadError as err:
                rows.append({"path": str(path), "error": err.reason})
        results = iter(self.predictor.predict_fn(images) if images else [])
        decoded = iter(images)
        out: dict[str, list[Any]] = {"path": [], "width": [], "height": [], "detections": [],
                                     "error": []}
        for row in rows:
            width = height = 0
            detections: list[dict[str, Any]] = []
            if row["error"] is None:
                image, result = next(decoded), next(results)
                width, height = image.size
                detections = detection_records(
                    result, class_names=self.predictor.class_names,
                    label_to_category_id=self.predictor.label_to_category_id,
                )
            out["path"].append(row["path"])
            out["width"].append(width)
            out["height"].append(height)
            out["detections"].append(detections)
            out["error"].append(row["error"])
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of images (read recursively)")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="folder for the JSON Lines files")
    parser.add_argument("--actors", type=int, default=1,
                        help="detector copies, one CPU each; fewer than --num-cpus")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args()
    if args.actors >= args.num_cpus:
        # Each actor holds a CPU for good: the read tasks need one left over, or nothing moves.
        parser.error(f"--actors {args.actors} needs --num-cpus of at least {args.actors + 1}")

    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    files = ray.data.read_binary_files(
        args.folder, include_paths=True,
        file_extensions=["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"],
    )
    detections = files.map_batches(
        Detect, fn_constructor_kwargs={"weights": args.weights,
                                       "score_threshold": args.score_threshold},
        batch_size=args.batch_size, compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=1,
    )
    detections.write_json(args.out)
    ray.shutdown()


if __name__ == "__main__":
    main()
