"""A generated detection set unlike the digit scenes: objects cut from scikit-image's photos
(a cat, a cup, a rocket, a face, a clock, a colour wheel) pasted, mirrored at random, on
textures, in non-square images, with sparse COCO category ids and some images without
objects.

    python benchmarks/photo_objects.py --out /tmp/objects --num-train 300 --num-val 100 --size small

writes ``out/{train,val}/*.jpg``, ``out/annotations_{train,val}.json`` and ``out/data.yaml``.
``--size medium`` places objects of 40-140 px on 480 x 360 (or 360 x 480) images; ``small``
places objects of 12-40 px on 640 x 480 images. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common import write_coco_split, write_data_yaml

# (COCO-style sparse id, name, scikit-image photo, crop box (x0, y0, x1, y1), mask shape)
OBJECTS = (
    (3, "cat", "chelsea", (120, 20, 330, 260), "ellipse"),
    (17, "cup", "coffee", (90, 30, 510, 370), "ellipse"),
    (42, "rocket", "rocket", (280, 30, 360, 420), "rect"),
    (58, "face", "astronaut", (150, 30, 330, 220), "ellipse"),
    (77, "clock", "clock", (90, 30, 330, 280), "ellipse"),
    (90, "wheel", "colorwheel", (0, 0, 371, 370), "ellipse"),
)
TEXTURES = ("grass", "gravel", "brick", "moon", "hubble_deep_field", "immunohistochemistry", "camera")
SIZES = {
    "medium": {"sides": (40, 140), "shapes": ((480, 360), (360, 480))},
    "small": {"sides": (12, 40), "shapes": ((640, 480),)},
}


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array)
    return image.convert("RGB")


def _sources() -> tuple[list[tuple[Image.Image, Image.Image]], list[Image.Image]]:
    """The object cut-outs with their alpha masks, and the background textures."""
    from skimage import data

    cutouts = []
    for _, _, photo, box, shape in OBJECTS:
        image = _rgb(getattr(data, photo)()).crop(box)
        mask = Image.new("L", image.size, 0)
        draw = ImageDraw.Draw(mask)
        if shape == "ellipse":
            draw.ellipse((0, 0, image.width - 1, image.height - 1), fill=255)
        else:
            draw.rectangle((0, 0, image.width - 1, image.height - 1), fill=255)
        cutouts.append((image, mask))
    textures = [_rgb(getattr(data, name)()) for name in TEXTURES]
    return cutouts, textures


def _background(rng: np.random.Generator, textures: list[Image.Image], w: int, h: int) -> Image.Image:
    texture = textures[int(rng.integers(len(textures)))]
    scale = rng.uniform(0.6, 1.4)
    cw, ch = min(texture.width, int(w / scale)), min(texture.height, int(h / scale))
    x, y = int(rng.integers(0, texture.width - cw + 1)), int(rng.integers(0, texture.height - ch + 1))
    tint = rng.uniform(0.6, 1.2, 3)
    pixels = np.asarray(texture.crop((x, y, x + cw, y + ch)).resize((w, h)), dtype=np.float32) * tint
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _free(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0 and iw * ih > 0.3 * min((x1 - x0) * (y1 - y0), (a1 - a0) * (b1 - b0)):
            return False
    return True


def write_photo_objects(
    out: Path, *, num_train: int, num_val: int, size: str = "medium", seed: int = 0,
    empty_share: float = 0.1, max_objects: int = 6,
) -> Path:
    """Write the dataset (COCO format) and return its ``data.yaml``."""
    cutouts, textures = _sources()
    spec = SIZES[size]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        folder = out / split
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            shapes = spec["shapes"]
            w, h = shapes[int(rng.integers(len(shapes)))]
            canvas = _background(rng, textures, w, h)
            placed: list[tuple[int, int, int, int]] = []
            wanted = 0 if rng.random() < empty_share else int(rng.integers(1, max_objects + 1))
            for _ in range(wanted * 4):
                if len(placed) == wanted:
                    break
                k = int(rng.integers(len(OBJECTS)))
                image, mask = cutouts[k]
                side = rng.uniform(*spec["sides"])
                aspect = image.width / image.height * rng.uniform(0.85, 1.15)
                ow = max(4, int(side * np.sqrt(aspect)))
                oh = max(4, int(side / np.sqrt(aspect)))
                if ow >= w or oh >= h:
                    continue
                x, y = int(rng.integers(0, w - ow)), int(rng.integers(0, h - oh))
                box = (x, y, x + ow, y + oh)
                if not _free(box, placed):
                    continue
                patch, alpha = image.resize((ow, oh)), mask.resize((ow, oh))
                if rng.random() < 0.5:
                    patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    alpha = alpha.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                gain = rng.uniform(0.7, 1.3)
                patch = Image.fromarray(np.clip(np.asarray(patch, dtype=np.float32) * gain, 0, 255).astype(np.uint8))
                canvas.paste(patch, (x, y), alpha)
                placed.append(box)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": OBJECTS[k][0],
                    "bbox": [x, y, ow, oh], "area": ow * oh, "iscrowd": 0,
                })
            name = f"{split}_{i:05d}.jpg"
            canvas.save(folder / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        write_coco_split(out, split, images, annotations, [{"id": cid, "name": name} for cid, name, *_ in OBJECTS])
    return write_data_yaml(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_photo_objects(
        args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
