"""Generated tracking sequences: handwritten digits moving over photo backgrounds, as in the
demo data (``efficientdet.data.demo``), with ground-truth tracks in the MOT Challenge format.

Four kinds of motion, each a short clip at 25 fps (320 x 240, the demo's image size):

* ``smooth``: 4 digits on slow Lissajous curves, all in view;
* ``abrupt``: 4 digits that change direction and speed at random every 5-12 frames, bouncing
  off the borders;
* ``crossing``: 2 pairs of digits meeting head-on, one passing in front of the other (the one
  behind is covered for a few frames), plus one wandering digit;
* ``enter_leave``: 6 digits entering from the borders at different times, crossing the
  picture on straight paths and leaving it.

The digits are scikit-learn's handwritten ones held out of the demo's training split, drawn as
the demo draws them (soft ink, a tint, dark on bright backgrounds and light on dark ones),
40-80 px tall. Each frame gets a little sensor noise (sigma 2/255).

Ground truth: one line per object and frame, ``frame,id,x,y,w,h,1,1,visibility`` (MOT17's
``gt.txt``): the box is the whole digit's ink (as if nothing covered it), cut at the image
border; ``visibility`` is the share of its ink that shows (not covered by a digit in front,
inside the image). Objects showing less than :data:`MIN_VISIBLE` of their ink are marked
``0`` in the 7th column (MOT's "ignore": neither a miss nor a false positive).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from efficientdet.data.demo import _background, _digit_alpha, split_digit_indices

KINDS = ("smooth", "abrupt", "crossing", "enter_leave")
SIZE = (320, 240)  # (W, H)
RATE = 25
MIN_VISIBLE = 0.3
NOISE = 2.0 / 255.0


@dataclass
class _Digit:
    """One object of a sequence: its ink and how it moves."""

    alpha: np.ndarray  # [h, w] ink alpha in 0..1
    colour: np.ndarray  # [3] in 0..1
    depth: int  # larger: in front
    path: Callable[[int], tuple[float, float] | None]  # frame -> top-left, None: not there


@dataclass
class Sequence:
    """A rendered sequence and its ground truth."""

    name: str
    frames: list[np.ndarray] = field(default_factory=list)  # uint8 [H, W, 3]
    gt: list[str] = field(default_factory=list)  # MOT lines

    def write(self, folder: Path) -> None:
        """``folder/<name>/gt/gt.txt`` and ``seqinfo.ini`` (TrackEval's MOT layout)."""
        root = folder / self.name
        (root / "gt").mkdir(parents=True, exist_ok=True)
        (root / "gt" / "gt.txt").write_text("".join(line + "\n" for line in self.gt))
        width, height = SIZE
        (root / "seqinfo.ini").write_text(
            f"[Sequence]\nname={self.name}\nimDir=img1\nframeRate={RATE}\n"
            f"seqLength={len(self.frames)}\nimWidth={width}\nimHeight={height}\nimExt=.png\n"
        )


class _Assets:
    """The held-out digits and the background photos, loaded once."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits, load_sample_images

        digits = load_digits()
        _, held_out = split_digit_indices(digits.target, 0.25, 0)
        self.images = digits.images
        self.pool = held_out
        self.photos = [Image.fromarray(p) for p in load_sample_images().images]

    def digit(self, rng: np.random.Generator, bright: bool, depth: int,
              path: Callable[[int], tuple[float, float] | None]) -> _Digit:
        index = int(self.pool[rng.integers(len(self.pool))])
        alpha = _digit_alpha(rng, self.images[index], float(rng.uniform(40, 80)))
        tint, strength = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 0.4)
        colour = tint * strength if bright else 1.0 - (1.0 - tint) * strength
        return _Digit(alpha * rng.uniform(0.8, 1.0), colour, depth, path)


def _lissajous(rng: np.random.Generator, extent: tuple[int, int]) -> Callable[[int], tuple[float, float]]:
    width, height = SIZE
    room_x, room_y = width - extent[1], height - extent[0]
    fx, fy = rng.uniform(0.01, 0.03, 2) * 2 * math.pi
    px, py = rng.uniform(0, 2 * math.pi, 2)

    def at(t: int) -> tuple[float, float]:
        return room_x * (0.5 + 0.45 * math.sin(fx * t + px)), room_y * (0.5 + 0.45 * math.sin(fy * t + py))

    return at


def _jumpy(rng: np.random.Generator, extent: tuple[int, int], frames: int) -> Callable[[int], tuple[float, float]]:
    """Straight runs of 5-12 frames, each with a new random velocity (2-8 px a frame),
    bouncing off the borders; positions precomputed."""
    width, height = SIZE
    room = np.array([width - extent[1], height - extent[0]], dtype=float)
    position = rng.uniform(0, 1, 2) * room
    points, left = [], 0
    velocity = np.zeros(2)
    for _ in range(frames):
        if left == 0:
            angle, speed = rng.uniform(0, 2 * math.pi), rng.uniform(2, 8)
            velocity, left = speed * np.array([math.cos(angle), math.sin(angle)]), int(rng.integers(5, 13))
        position = position + velocity
        for axis in range(2):
            if not 0 <= position[axis] <= room[axis]:
                velocity[axis] = -velocity[axis]
                position[axis] = float(np.clip(position[axis], 0, room[axis]))
        points.append((float(position[0]), float(position[1])))
        left -= 1
    return lambda t: points[t]


def _line(start: tuple[float, float], end: tuple[float, float], first: int, last: int
          ) -> Callable[[int], tuple[float, float] | None]:
    def at(t: int) -> tuple[float, float] | None:
        if not first <= t <= last:
            return None
        s = (t - first) / max(1, last - first)
        return start[0] + s * (end[0] - start[0]), start[1] + s * (end[1] - start[1])

    return at


def _across(extent: tuple[int, int], leftward: bool, y0: float, y1: float, first: int, last: int
            ) -> Callable[[int], tuple[float, float] | None]:
    """In from one side at frame ``first``, out at the other at ``last``."""
    outside_left, outside_right = -extent[1] - 2.0, SIZE[0] + 2.0
    if leftward:
        return _line((outside_right, y0), (outside_left, y1), first, last)
    return _line((outside_left, y0), (outside_right, y1), first, last)


def _digits(kind: str, rng: np.random.Generator, assets: _Assets, bright: bool, frames: int) -> list[_Digit]:
    width, height = SIZE
    made: list[_Digit] = []

    def add(path_for: Callable[[tuple[int, int]], Callable[[int], tuple[float, float] | None]]) -> None:
        digit = assets.digit(rng, bright, len(made), lambda t: None)
        digit.path = path_for(digit.alpha.shape)
        made.append(digit)

    if kind == "smooth":
        for _ in range(4):
            add(lambda extent: _lissajous(rng, extent))
    elif kind == "abrupt":
        for _ in range(4):
            add(lambda extent: _jumpy(rng, extent, frames))
    elif kind == "crossing":
        for lane in (0.2, 0.6):
            y = lane * height + rng.uniform(-5, 5)
            add(lambda extent, y=y: _line((-0.05 * width, y), (0.8 * width, y + 8), 0, frames - 1))
            add(lambda extent, y=y: _line((0.85 * width - extent[1], y + 6), (0.0, y - 4), 0, frames - 1))
        add(lambda extent: _jumpy(rng, extent, frames))
    elif kind == "enter_leave":
        for k in range(6):
            first = int(k * frames / 8 + rng.integers(0, 4))
            last = min(frames - 1, first + int(rng.integers(frames // 3, frames // 2)))
            y0, y1 = rng.uniform(0, height - 80, 2)
            add(lambda extent, k=k, y0=y0, y1=y1, f=first, e=last: _across(extent, k % 2 == 1, y0, y1, f, e))
    else:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return made


def _render(background: np.ndarray, digits: list[_Digit], t: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, list[str]]:
    """Frame ``t`` (0-based) and its MOT ground-truth lines."""
    height, width = background.shape[:2]
    canvas = background + rng.normal(0.0, NOISE, background.shape).astype(np.float32)
    covered = np.zeros((height, width), bool)
    lines: list[tuple[int, str]] = []
    for track_id, digit in sorted(enumerate(digits), key=lambda item: -item[1].depth):  # front first
        corner = digit.path(t)
        if corner is None:
            continue
        ox, oy = round(corner[0]), round(corner[1])
        ah, aw = digit.alpha.shape
        ink = digit.alpha >= 0.5
        total = int(ink.sum())
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + aw, width), min(oy + ah, height)
        if x0 >= x1 or y0 >= y1 or total == 0:
            continue
        a = digit.alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        inside = ink[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        shows = inside & ~covered[y0:y1, x0:x1]
        visible = float(shows.sum()) / total
        # Paint behind what is in front: only where nothing in front covers.
        paint = a * ~covered[y0:y1, x0:x1]
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1.0 - paint[..., None]) + digit.colour * paint[..., None]
        covered[y0:y1, x0:x1] |= inside
        rows, cols = np.nonzero(ink)
        bx0, by0 = max(0, ox + int(cols.min())), max(0, oy + int(rows.min()))
        bx1, by1 = min(width, ox + int(cols.max()) + 1), min(height, oy + int(rows.max()) + 1)
        if bx0 >= bx1 or by0 >= by1 or visible == 0.0:
            continue
        flag = 1 if visible >= MIN_VISIBLE else 0
        lines.append((track_id, f"{t + 1},{track_id + 1},{bx0},{by0},{bx1 - bx0},{by1 - by0},{flag},1,{visible:.3f}"))
    image = np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, [line for _, line in sorted(lines)]


def make_sequence(kind: str, seed: int, frames: int, assets: _Assets | None = None) -> Sequence:
    """Render sequence ``kind``-``seed`` of ``frames`` frames and its ground truth."""
    assets = assets or _Assets()
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    width, height = SIZE
    background = _background(rng, assets.photos, (height, width))
    bright = float(background.mean()) > 0.5
    # Dark ink on bright backgrounds, light on dark ones (the demo's usual case).
    digits = _digits(kind, rng, assets, bright, frames)
    sequence = Sequence(f"{kind}-{seed}")
    for t in range(frames):
        image, lines = _render(background, digits, t, rng)
        sequence.frames.append(image)
        sequence.gt.extend(lines)
    return sequence


def make_sequences(kinds: tuple[str, ...], seeds: range, frames: int) -> list[Sequence]:
    assets = _Assets()
    return [make_sequence(kind, seed, frames, assets) for seed in seeds for kind in kinds]
