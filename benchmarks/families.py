"""Families of generated detection sets, each unlike the demo's digit scenes in its own way,
for tuning the budget recipe across kinds of data rather than seeds of one generator.

    python benchmarks/families.py --family aspect --seed 1 --num-train 300 --num-val 100 --out /tmp/aspect-1

writes ``out/{train,val}/*.jpg``, ``out/annotations_{train,val}.json`` (COCO) and
``out/data.yaml``, as ``benchmarks/photo_objects.py`` does. ``--set knob=value`` changes one of
the family's knobs (:class:`Family`), e.g. ``--set empty_share=0.3``. A set is a pure function
of its arguments; each image of it of ``(seed, family, split, index)``.

The families (:data:`FAMILIES`):

- ``aspect``: portrait, landscape, 4:3 and 16:9 photos of several sizes, objects of 14-170 px,
  sparse COCO ids (the photo cut-outs' and more);
- ``clutter``: busy backgrounds with strokes drawn over them and 4-12 unlabelled objects of
  other kinds (digits, other shapes, photo cut-outs, LFW patches) beside the labelled shapes;
- ``small``: 12-40 objects of 10-32 px in each 640 x 480 or 800 x 600 image;
- ``large``: 1-3 objects of 140-420 px (most of the image), sparse ids;
- ``longtail``: twelve classes drawn with weights ``1 / (k + 1) ** 1.2`` (the first about 30
  times the last), sparse ids;
- ``classes30``: thirty classes, the ten digits and twenty shapes;
- ``gray``: grayscale images (saved as such) with the contrast cut to 40 %;
- ``empty``: 20 % of the images without objects.

Validation never shows an object that training showed: the digits come from held-out glyphs,
the faces from held-out LFW faces, the shapes are filled from held-out photos
(``benchmarks/family_objects.py``); the families that label the photo cut-outs (one photo each)
hold out the validation backgrounds instead (``holdout_backgrounds``). Each annotation keeps
its instance's source (``"instance"``) and each image its background (``"background"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from common import write_coco_split, write_data_yaml
from family_objects import BACKGROUNDS, CUTOUTS, DIGITS, KINDS, SHAPES, draw, photo
from photo_objects import OBJECTS, _background, _free

SPLIT_CODES = {"train": 1, "val": 2}
PLACEMENT_TRIES = 6  # per object, before it is left out
SHAPE_NAMES = tuple(SHAPES)


@dataclass(frozen=True)
class Family:
    """The knobs of a family of generated sets.

    Attributes:
        classes: the labelled kinds (``family_objects.KINDS``), in label order.
        ids: their COCO category ids (None: 1..K).
        shapes: ``(width, height)`` of the images, one drawn per image.
        sides: smallest and largest object side ``sqrt(w h)`` in pixels (log-uniform).
        objects: fewest and most objects an image (fewer when they do not fit).
        empty_share: the share of the images without objects (exactly, rounded).
        longtail: class weights ``1 / (k + 1) ** longtail`` (0: uniform).
        distractors: fewest and most unlabelled objects an image, of ``distractor_kinds``.
        clutter: strokes drawn over each background.
        gray: grayscale images; ``contrast``: pixel values pulled to the image mean by this
            factor (1: as drawn).
        holdout_backgrounds: validation's backgrounds from other photos than training's.
    """

    classes: tuple[str, ...]
    ids: tuple[int, ...] | None = None
    shapes: tuple[tuple[int, int], ...] = ((512, 384), (384, 512))
    sides: tuple[float, float] = (24.0, 120.0)
    objects: tuple[int, int] = (1, 6)
    empty_share: float = 0.05
    longtail: float = 0.0
    distractors: tuple[int, int] = (0, 0)
    distractor_kinds: tuple[str, ...] = ()
    clutter: int = 0
    gray: bool = False
    contrast: float = 1.0
    holdout_backgrounds: bool = False

    def __post_init__(self) -> None:
        unknown = [k for k in (*self.classes, *self.distractor_kinds) if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown object kinds {unknown}; kinds: {', '.join(KINDS)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {self.classes}")
        if set(self.classes) & set(self.distractor_kinds):
            raise ValueError("a kind cannot be both a class and a distractor")
        if self.ids is not None and (len(self.ids) != len(self.classes) or len(set(self.ids)) != len(self.ids)):
            raise ValueError(f"ids must be {len(self.classes)} distinct numbers, got {self.ids}")
        if not 0 < self.sides[0] <= self.sides[1] or not 0 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"sides and objects must be (low, high) ranges, got {self.sides}, {self.objects}")
        if not 0 <= self.empty_share <= 1 or not 0 < self.contrast <= 1:
            raise ValueError("empty_share must be in [0, 1] and contrast in (0, 1]")

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.ids if self.ids is not None else tuple(range(1, len(self.classes) + 1))

    def class_weights(self) -> np.ndarray:
        weights = 1.0 / np.arange(1, len(self.classes) + 1, dtype=np.float64) ** self.longtail
        return weights / weights.sum()


_SPARSE_PHOTO_IDS = tuple(cid for cid, *_ in OBJECTS)  # 3, 17, 42, 58, 77, 90
FAMILIES: dict[str, Family] = {
    "aspect": Family(
        classes=(*CUTOUTS, "face", "triangle", "ring", "arrow"),
        ids=(*_SPARSE_PHOTO_IDS, 11, 25, 33, 64),
        shapes=((640, 480), (480, 640), (640, 360), (360, 640), (512, 384), (384, 512), (800, 450), (450, 800)),
        sides=(14.0, 170.0), objects=(1, 6), empty_share=0.1, holdout_backgrounds=True,
    ),
    "clutter": Family(
        classes=("circle", "triangle", "square", "star5", "plus", "heart", "arrow", "crescent"),
        shapes=((512, 512), (640, 480)), sides=(20.0, 100.0),
        distractors=(4, 12),
        distractor_kinds=(*DIGITS, "pentagon", "hexagon", "star4", "xcross", "ring", "diamond", "semicircle",
                          "ell", "tee", "frame", "trapezoid", "chevron", *CUTOUTS, "patch"),
        clutter=25,
    ),
    "small": Family(
        classes=("circle", "triangle", "square", "star5", "plus", "ring", "cat", "wheel"),
        shapes=((640, 480), (800, 600)), sides=(10.0, 32.0), objects=(12, 40), holdout_backgrounds=True,
    ),
    "large": Family(
        classes=(*CUTOUTS, "ring", "heart", "star5", "hexagon"), ids=(*_SPARSE_PHOTO_IDS, 8, 31, 50, 99),
        shapes=((512, 512), (640, 480), (480, 640)), sides=(140.0, 420.0), objects=(1, 3),
        holdout_backgrounds=True,
    ),
    "longtail": Family(
        classes=("circle", "triangle", "square", "pentagon", "hexagon", "star5", "star4", "plus", "ring",
                 "heart", "arrow", "crescent"),
        ids=(5, 9, 14, 20, 27, 35, 44, 54, 65, 77, 90, 104),
        sides=(20.0, 110.0), objects=(2, 8), longtail=1.2,
    ),
    "classes30": Family(
        classes=(*DIGITS, *SHAPE_NAMES), shapes=((512, 384), (384, 512), (480, 480)),
        sides=(22.0, 110.0), objects=(3, 10),
    ),
    "gray": Family(
        classes=("circle", "triangle", "square", "star5", "plus", "heart", "arrow", "ring", "3", "7"),
        sides=(20.0, 130.0), gray=True, contrast=0.4,
    ),
    "empty": Family(
        classes=("triangle", "square", "star5", "heart", "face", "2", "5", "8"),
        shapes=((640, 480), (480, 640)), sides=(24.0, 130.0), objects=(1, 5), empty_share=0.2,
    ),
}


def _clutter(rng: np.random.Generator, canvas: Image.Image, strokes: int) -> None:
    """Lines, arcs and outlines in random colours drawn over a background."""
    pen = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(strokes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = int(rng.integers(1, 5))
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        kind = int(rng.integers(3))
        if kind == 0:
            pen.line((x0, y0, x1, y1), fill=colour, width=width)
        elif kind == 1:
            pen.arc((x0, y0, x1, y1), float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour, width=width)
        else:
            pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)


def _paste(canvas: np.ndarray, rgb: np.ndarray | None, alpha: np.ndarray, x: int, y: int,
           rng: np.random.Generator) -> None:
    """Blend an instance into ``canvas`` (``[h, w, 3]`` float 0..255) at ``(x, y)``; ink
    without colour (digits) is dark on bright ground and bright on dark, mostly."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    if rgb is None:
        bright = float(region.mean()) > 127.5
        dark = bright if rng.random() < 0.9 else not bright
        tint = rng.uniform(0.0, 1.0, 3) * rng.uniform(0.0, 0.4)
        rgb = np.broadcast_to((tint if dark else 1.0 - tint) * 255.0, region.shape)
    a = alpha[..., None] * rng.uniform(0.8, 1.0)
    canvas[y : y + h, x : x + w] = region * (1.0 - a) + np.clip(rgb, 0, 255) * a


def _side(rng: np.random.Generator, family: Family, w: int, h: int) -> float:
    low, high = family.sides
    return min(float(np.exp(rng.uniform(math.log(low), math.log(high)))), 0.9 * min(w, h))


def render_image(
    rng: np.random.Generator, family: Family, split: str, *, empty: bool = False
) -> tuple[Image.Image, list[dict[str, Any]], str]:
    """One image of ``family`` for ``split``; ``empty``: without objects (distractors and
    clutter still drawn).

    Returns:
        ``(image, objects, background)``: each object ``{"label", "box" (x0, y0, x1, y1)
        exclusive, "instance"}``; the background photo's name.
    """
    w, h = family.shapes[int(rng.integers(len(family.shapes)))]
    pool = BACKGROUNDS["val" if split == "val" and family.holdout_backgrounds else "train"]
    background = pool[int(rng.integers(len(pool)))]
    ground = _background(rng, [photo(background)], w, h)
    if family.clutter:
        _clutter(rng, ground, family.clutter)
    canvas = np.asarray(ground, dtype=np.float32).copy()
    count = 0 if empty else int(rng.integers(family.objects[0], family.objects[1] + 1))
    extra = int(rng.integers(family.distractors[0], family.distractors[1] + 1)) if family.distractor_kinds else 0
    items = [True] * count + [False] * extra
    rng.shuffle(items)  # labelled and unlabelled in random order
    weights = family.class_weights()
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    for labelled in items:
        if labelled:
            label = int(rng.choice(len(family.classes), p=weights))
            kind = family.classes[label]
        else:
            label, kind = -1, family.distractor_kinds[int(rng.integers(len(family.distractor_kinds)))]
        for _ in range(PLACEMENT_TRIES):
            rgb, alpha, key = draw(rng, kind, _side(rng, family, w, h), split)
            ah, aw = alpha.shape
            if not ah or aw >= w or ah >= h:
                continue
            x, y = int(rng.integers(0, w - aw + 1)), int(rng.integers(0, h - ah + 1))
            box = (x, y, x + aw, y + ah)
            if not _free(box, placed):
                continue
            _paste(canvas, rgb, alpha, x, y, rng)
            placed.append(box)
            if labelled:
                objects.append({"label": label, "box": box, "instance": key})
            break
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if family.gray or family.contrast < 1:
        image = _tone(image, family)
    return image, objects, background


def _tone(image: Image.Image, family: Family) -> Image.Image:
    """Grayscale and contrast cut toward the image mean."""
    picture = image.convert("L") if family.gray else image
    pixels = np.asarray(picture, dtype=np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    toned = mean + (pixels - mean) * family.contrast
    return Image.fromarray(np.clip(np.round(toned), 0, 255).astype(np.uint8))


def write_family(
    out: str | Path, family: str | Family, *, seed: int, num_train: int, num_val: int, **knobs: Any
) -> Path:
    """Write a set of ``family`` (a name of :data:`FAMILIES` or a :class:`Family`) with
    ``knobs`` replaced, and return its ``data.yaml``."""
    code = 0  # in the images' seeds: sets of two families with one seed differ
    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
        code, family = zlib.crc32(family.encode()), FAMILIES[family]
    family = dataclasses.replace(family, **knobs) if knobs else family
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name} for cid, name in zip(family.category_ids, family.classes, strict=True)]
    for split, count in (("train", num_train), ("val", num_val)):
        (out / split).mkdir(exist_ok=True)
        images, annotations = [], []
        # Exactly the family's share of the images without objects, at random places.
        order = np.random.default_rng([seed, code, SPLIT_CODES[split]]).permutation(count)
        empty = set(order[: round(family.empty_share * count)].tolist())
        for i in range(count):
            rng = np.random.default_rng([seed, code, SPLIT_CODES[split], i])
            image, objects, background = render_image(rng, family, split, empty=i in empty)
            name = f"{i + 1:06d}.jpg"
            image.save(out / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height,
                           "background": background})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": family.category_ids[obj["label"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                    "instance": obj["instance"],
                })
        write_coco_split(out, split, images, annotations, categories)
    return write_data_yaml(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                        help="change a knob of the family (YAML value), e.g. empty_share=0.3")
    args = parser.parse_args()
    knobs = {}
    for text in args.knobs:
        key, _, value = text.partition("=")
        parsed = yaml.safe_load(value)
        knobs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in parsed) if isinstance(parsed, list) else parsed
    path = write_family(args.out, args.family, seed=args.seed, num_train=args.num_train, num_val=args.num_val, **knobs)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
