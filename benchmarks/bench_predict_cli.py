"""``efficientdet predict`` as a user runs it: a folder of photos through an ONNX Runtime export,
against the network alone on the same machine.

    .venv/bin/python benchmarks/bench_predict_cli.py [--images 200] [--size 1280 960] [--batch 4]

Writes ``--images`` JPEG photos (smooth structure plus noise, ``--size`` W H, quality 90) and a
Lite0 export (ImageNet backbone, random heads, 3 classes; batch dimension dynamic) into a
temporary folder, then times, each ``--repeats`` times in alternation:

* ``predict`` with pictures: ``efficientdet predict DIR --weights lite0.onnx --out OUT`` (the
  JSONL log, the COCO file and an annotated copy of every image);
* ``predict`` without pictures (``--no-pictures``) when the installed version has the switch;
* the network alone: ``OnnxDetector.run`` on letterboxed batches already in memory.

Each ``predict`` is a fresh process (start-up included, as a user sees it); images/s counts the
photos over the whole command. The figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import machine, setup


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        phase = i * 37
        base = np.stack([
            (x + phase) * 255 // (width + phase), y * 255 // height,
            (x + y + phase) * 255 // (width + height + phase),
        ], -1)
        noise = rng.integers(0, 40, (height, width, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image, "RGB").save(folder / f"photo_{i:04d}.jpg", quality=90)


def export_lite0(path: Path) -> None:
    from efficientdet.deploy.export import export_onnx
    from efficientdet.modeling.model import EfficientDet
    from efficientdet.modeling.scaling import config_for_training

    torch.manual_seed(0)
    model = EfficientDet(config_for_training("tf_efficientdet_lite0", None, 3), pretrained_backbone=True)
    export_onnx(model.eval(), path, batch="dynamic", class_names=["a", "b", "c"])


def has_switch(flag: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "efficientdet", "predict", "--help"],
                         capture_output=True, text=True).stdout
    return flag in out


def time_predict(photos: Path, weights: Path, out: Path, batch: int, extra: list[str]) -> float:
    command = [sys.executable, "-m", "efficientdet", "predict", str(photos), "--weights", str(weights),
               "--out", str(out), "--batch-size", str(batch), "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"predict failed:\n{done.stderr[-2000:]}")
    return seconds


def time_network(weights: Path, photos: Path, batch: int, repeats: int) -> float:
    """Seconds per image of the exported graph on letterboxed inputs already in memory."""
    from efficientdet.deploy.onnx_backend import OnnxDetector
    from efficientdet.detection.transform import preprocess_batch

    detector = OnnxDetector(weights, device="cpu")
    files = sorted(photos.glob("*.jpg"))[: batch * 4]
    images = [Image.open(f).convert("RGB") for f in files]
    meta = detector.metadata
    batches = []
    for i in range(0, len(images), batch):
        tensor, _ = preprocess_batch(images[i : i + batch], meta.image_size, meta.mean, meta.std)
        batches.append(tensor.numpy())
    detector.run(batches[0])  # warm-up
    per_image = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            detector.run(b)
        per_image.append((time.perf_counter() - start) / len(images))
    return statistics.median(per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=[1280, 960], metavar=("W", "H"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = root / "photos"
        write_photos(photos, args.images, *args.size)
        weights = root / "lite0.onnx"
        export_lite0(weights)
        variants: dict[str, list[str]] = {"predict, with pictures": []}
        if has_switch("--no-pictures"):
            variants["predict, no pictures"] = ["--no-pictures"]
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, extra in variants.items():
                out = root / f"out-{r}-{len(seconds[name])}-{name.split(',')[1].strip().replace(' ', '-')}"
                seconds[name].append(time_predict(photos, weights, out, args.batch, extra))
        network = time_network(weights, photos, args.batch, args.repeats)
    print(f"{args.images} photos {args.size[0]}x{args.size[1]}, Lite0 ONNX export, batch {args.batch}; {machine()}")
    print("| what | seconds | images/s |")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} (whole command) | {median:.1f} | {args.images / median:.1f} |")
    print(f"| network alone (ONNX Runtime, letterboxed batches in memory) | "
          f"{network * args.images:.1f} | {1 / network:.1f} |")


if __name__ == "__main__":
    main()
