"""The objects and backgrounds the dataset families (``benchmarks/families.py``) are drawn
from, all offline: scikit-learn's handwritten digits and two sample photos, scikit-image's
photos, and shapes drawn here.

Every kind of object is a name (a class, or a distractor where a family leaves it
unlabelled) and :func:`draw` makes an instance of it for a split:

- ``"0"`` .. ``"9"``: scikit-learn's handwritten digits (the demo's glyphs and ink); training
  and validation draw from disjoint glyphs (:func:`efficientdet.data.demo.split_digit_indices`).
- :data:`SHAPES`: twenty shapes, outline drawn here, turned by up to 15 degrees, filled with a
  tinted crop of a photo; training and validation fill from disjoint photos
  (:data:`FILLS`).
- ``"face"``: the 100 faces of scikit-image's LFW subset, 70 for training and 30 for
  validation.
- ``"patch"``: the subset's 100 non-face patches, as distractors (both splits).
- :data:`CUTOUTS`: the six photo cut-outs of ``benchmarks/photo_objects.py`` (``cat``, ``cup``,
  ``rocket``, ``astronaut`` (its face), ``clock``, ``wheel``): one photo each, the same in both
  splits; families that label them hold out their validation backgrounds instead
  (:data:`BACKGROUNDS`).

An instance is ``(rgb, alpha, key)``: ``rgb`` ``[h, w, 3]`` float 0..255 or None (ink
coloured where it is pasted), ``alpha`` ``[h, w]`` in 0..1 cut to its tight box (alpha >= 0.5),
and ``key`` the instance's source ("digit:123", "fill:coffee", ...), which the annotations
keep so that the held-out splits can be checked.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from efficientdet.data.demo import _digit_alpha, split_digit_indices
from photo_objects import OBJECTS, _sources

DIGITS = tuple(str(d) for d in range(10))
# The cut-outs by name (photo_objects calls the astronaut's "face"; "face" here is LFW's).
CUTOUTS = tuple("astronaut" if name == "face" else name for _, name, *_ in OBJECTS)
SPLITS = ("train", "val")
# Background photos: training's, and validation's when a family holds them out.
BACKGROUNDS = {
    "train": ("grass", "brick", "moon", "camera", "china", "page"),
    "val": ("gravel", "hubble_deep_field", "cell", "text"),
}
# Photos the shapes are filled from, disjoint between the splits.
FILLS = {
    "train": ("chelsea", "coffee", "rocket", "astronaut", "colorwheel", "immunohistochemistry"),
    "val": ("retina", "motorcycle", "coins", "flower"),
}
FACES_FOR_TRAIN = 70  # of the LFW subset's 100 faces; the other 30 are validation's
SUPERSAMPLE = 3  # shapes are drawn this much larger, then reduced (smooth edges)
MAX_TURN = 15.0  # degrees

Outline = Callable[[ImageDraw.ImageDraw, float, float], None]


@functools.cache
def photo(name: str) -> Image.Image:
    """An offline photo by name as RGB: scikit-image's ``skimage.data`` ones, ``china`` and
    ``flower`` (scikit-learn's samples), ``motorcycle`` (the left stereo view)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    from skimage import data

    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _polygon(points: list[tuple[float, float]]) -> Outline:
    """An outline from points in the unit square (x right, y down)."""

    def outline(draw: ImageDraw.ImageDraw, w: float, h: float) -> None:
        draw.polygon([(x * (w - 1), y * (h - 1)) for x, y in points], fill=255)

    return outline


def _regular(n: int, inner: float | None = None) -> Outline:
    """A regular ``n``-gon, or an ``n``-pointed star whose inner corners sit at ``inner`` of the
    radius, point up."""
    corners = n * (2 if inner else 1)
    points = []
    for k in range(corners):
        angle = -math.pi / 2 + 2 * math.pi * k / corners
        radius = inner if inner and k % 2 else 1.0
        points.append((0.5 + 0.5 * radius * math.cos(angle), 0.5 + 0.5 * radius * math.sin(angle)))
    return _polygon(points)


def _ellipse(hole: tuple[float, float, float, float] | None = None) -> Outline:
    """A filled ellipse, less an elliptic ``hole`` (unit-square xyxy) when given."""

    def outline(draw: ImageDraw.ImageDraw, w: float, h: float) -> None:
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
        if hole is not None:
            x0, y0, x1, y1 = hole
            draw.ellipse((x0 * w, y0 * h, x1 * w, y1 * h), fill=0)

    return outline


def _frame(draw: ImageDraw.ImageDraw, w: float, h: float) -> None:
    draw.rectangle((0, 0, w - 1, h - 1), fill=255)
    draw.rectangle((0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h), fill=0)


def _heart(draw: ImageDraw.ImageDraw, w: float, h: float) -> None:
    draw.ellipse((0, 0, 0.55 * w, 0.55 * h), fill=255)
    draw.ellipse((0.45 * w, 0, w - 1, 0.55 * h), fill=255)
    draw.polygon([(0.02 * w, 0.35 * h), (0.98 * w, 0.35 * h), (0.5 * w, h - 1)], fill=255)


def _semicircle(draw: ImageDraw.ImageDraw, w: float, h: float) -> None:
    draw.pieslice((0, 0, w - 1, 2 * h - 1), 180, 360, fill=255)


SHAPES: dict[str, Outline] = {
    "circle": _ellipse(),
    "triangle": _polygon([(0.5, 0), (1, 1), (0, 1)]),
    "square": _polygon([(0, 0), (1, 0), (1, 1), (0, 1)]),
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star5": _regular(5, inner=0.45),
    "star4": _regular(4, inner=0.35),
    "plus": _polygon([(0.33, 0), (0.67, 0), (0.67, 0.33), (1, 0.33), (1, 0.67), (0.67, 0.67), (0.67, 1),
                      (0.33, 1), (0.33, 0.67), (0, 0.67), (0, 0.33), (0.33, 0.33)]),
    "xcross": _polygon([(0, 0.2), (0.2, 0), (0.5, 0.3), (0.8, 0), (1, 0.2), (0.7, 0.5), (1, 0.8), (0.8, 1),
                        (0.5, 0.7), (0.2, 1), (0, 0.8), (0.3, 0.5)]),
    "ring": _ellipse(hole=(0.27, 0.27, 0.73, 0.73)),
    "crescent": _ellipse(hole=(0.3, -0.1, 1.2, 0.9)),
    "arrow": _polygon([(0, 0.35), (0.55, 0.35), (0.55, 0.1), (1, 0.5), (0.55, 0.9), (0.55, 0.65), (0, 0.65)]),
    "heart": _heart,
    "diamond": _polygon([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]),
    "semicircle": _semicircle,
    "ell": _polygon([(0, 0), (0.35, 0), (0.35, 0.65), (1, 0.65), (1, 1), (0, 1)]),
    "tee": _polygon([(0, 0), (1, 0), (1, 0.33), (0.67, 0.33), (0.67, 1), (0.33, 1), (0.33, 0.33), (0, 0.33)]),
    "frame": _frame,
    "trapezoid": _polygon([(0.25, 0), (0.75, 0), (1, 1), (0, 1)]),
    "chevron": _polygon([(0, 0), (0.35, 0), (0.7, 0.5), (0.35, 1), (0, 1), (0.35, 0.5)]),
}
KINDS = (*DIGITS, *SHAPES, "face", *CUTOUTS, "patch")


@functools.cache
def _digit_pools(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The digit images, their classes, and each split's glyph indices (the demo's split)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val = split_digit_indices(digits.target, 0.25, seed)
    return digits.images, digits.target, {"train": train, "val": val}


@functools.cache
def _lfw() -> np.ndarray:
    from skimage import data

    return np.asarray(data.lfw_subset(), dtype=np.float32)


@functools.cache
def _cutouts() -> list[tuple[Image.Image, Image.Image]]:
    return _sources()[0]


def _tight(rgb: np.ndarray | None, alpha: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Cut an instance to the box of its alpha >= 0.5."""
    rows, cols = np.nonzero(alpha >= 0.5)
    if rows.size == 0:
        return rgb, alpha[:0, :0]
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return (rgb[y0:y1, x0:x1] if rgb is not None else None), alpha[y0:y1, x0:x1]


def _fill(rng: np.random.Generator, split: str, w: int, h: int) -> tuple[np.ndarray, str]:
    """A tinted crop of one of the split's fill photos, ``[h, w, 3]``."""
    name = FILLS[split][int(rng.integers(len(FILLS[split])))]
    source = photo(name)
    side = min(source.size) * rng.uniform(0.25, 0.6)
    cw, ch = side * math.sqrt(w / h), side / math.sqrt(w / h)
    # From the central part: some photos have dark borders.
    x = rng.uniform(0.1 * source.width, max(0.1 * source.width, 0.9 * source.width - cw))
    y = rng.uniform(0.1 * source.height, max(0.1 * source.height, 0.9 * source.height - ch))
    crop = source.resize((w, h), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
    return np.asarray(crop, dtype=np.float32) * rng.uniform(0.7, 1.3, 3), name


def _shape(rng: np.random.Generator, name: str, side: float, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    aspect = rng.uniform(0.8, 1.25)
    w, h = max(4, round(side * math.sqrt(aspect))), max(4, round(side / math.sqrt(aspect)))
    big = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    SHAPES[name](ImageDraw.Draw(big), big.width, big.height)
    big = big.rotate(rng.uniform(-MAX_TURN, MAX_TURN), resample=Image.Resampling.BILINEAR, expand=True)
    mask = big.resize((max(1, big.width // SUPERSAMPLE), max(1, big.height // SUPERSAMPLE)), Image.Resampling.BOX)
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    rgb, key = _fill(rng, split, alpha.shape[1], alpha.shape[0])
    return rgb, alpha, f"fill:{key}"


def _digit(rng: np.random.Generator, name: str, side: float, split: str) -> tuple[None, np.ndarray, str]:
    images, targets, pools = _digit_pools()
    pool = pools[split][targets[pools[split]] == int(name)]
    index = int(pool[rng.integers(len(pool))])
    return None, _digit_alpha(rng, images[index], side), f"digit:{index}"


def _lfw_instance(rng: np.random.Generator, name: str, side: float, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    faces = _lfw()
    if name == "face":
        first, count = (0, FACES_FOR_TRAIN) if split == "train" else (FACES_FOR_TRAIN, 100 - FACES_FOR_TRAIN)
    else:
        first, count = 100, 100
    index = first + int(rng.integers(count))
    w, h = max(4, round(side * 0.9)), max(4, round(side * 1.1))
    gray = np.asarray(Image.fromarray(faces[index] * 255).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    rgb = np.clip(gray, 0, 255)[..., None] * rng.uniform(0.8, 1.2, 3)
    mask = Image.new("L", (w, h), 0)
    if name == "face":
        ImageDraw.Draw(mask).ellipse((0, 0, w - 1, h - 1), fill=255)
    else:
        ImageDraw.Draw(mask).rectangle((0, 0, w - 1, h - 1), fill=255)
    return rgb, np.asarray(mask, dtype=np.float32) / 255.0, f"{name}:{index}"


def _cutout(rng: np.random.Generator, name: str, side: float, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    image, mask = _cutouts()[CUTOUTS.index(name)]
    aspect = image.width / image.height * rng.uniform(0.85, 1.15)
    w, h = max(4, round(side * math.sqrt(aspect))), max(4, round(side / math.sqrt(aspect)))
    patch, alpha = image.resize((w, h)), mask.resize((w, h))
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        alpha = alpha.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    rgb = np.asarray(patch, dtype=np.float32) * rng.uniform(0.7, 1.3)
    return rgb, np.asarray(alpha, dtype=np.float32) / 255.0, f"cutout:{name}"


def draw(rng: np.random.Generator, kind: str, side: float, split: str) -> tuple[np.ndarray | None, np.ndarray, str]:
    """An instance of ``kind`` about ``side`` pixels across (``sqrt(w h)``) for ``split``:
    ``(rgb or None, alpha, key)`` as the module docstring says, cut to its tight box."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if kind in DIGITS:
        made: tuple[np.ndarray | None, np.ndarray, str] = _digit(rng, kind, side, split)
    elif kind in SHAPES:
        made = _shape(rng, kind, side, split)
    elif kind in ("face", "patch"):
        made = _lfw_instance(rng, kind, side, split)
    elif kind in CUTOUTS:
        made = _cutout(rng, kind, side, split)
    else:
        raise ValueError(f"unknown object kind {kind!r}; kinds: {', '.join(KINDS)}")
    rgb, alpha, key = made
    rgb, alpha = _tight(rgb, alpha)
    return rgb, alpha, key
