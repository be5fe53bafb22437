"""Augmentations that combine training images: mosaic (:mod:`.mosaic`), mixup and copy-paste,
and :class:`MixAugment`, which draws them for a dataset item.

- **mixup** (Zhang et al. 2018; for detection as in ultralytics and mmdetection): two
  augmented images blended pixel by pixel, ``w * a + (1 - w) * b`` with ``w`` drawn from
  ``Beta(alpha, alpha)``; both sets of boxes are kept.
- **copy-paste** (Ghiasi et al. 2021, "simple copy-paste", with boxes instead of masks): some
  objects of another augmented image, each the pixel rectangle around its box, pasted onto
  this one where they were in theirs. A box that the pasted rectangles cover is cut to the
  tight box of what still shows, and dropped when less than ``min_visible`` of its area shows
  (:func:`visible_part`).

Both work on the outputs of the training transform (normalised ``Tensor[3, H, W]`` of the
input size, boxes xyxy in input pixels), so each image has had its own flip and scale
jitter; mosaic works before it, on the images as read. :class:`MixAugment` is the one place
that draws them, used by :class:`~efficientdet.data.DetectionDataset` for the on-the-fly loader
and, through it, for the augmented views of the feature cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .mosaic import MIN_SIDE, MIN_VISIBLE, LabelledImage, clip_boxes, mosaic
from .transforms import TrainTransform, TransformOutput

PASTED = -1  # TransformOutput.indices of a box that came from another image

Reader = Callable[[int], LabelledImage]


def mixup(a: TransformOutput, b: TransformOutput, weight: float) -> TransformOutput:
    """``weight * a + (1 - weight) * b`` pixel by pixel, with the boxes of both (``a``'s first).

    Both are training-transform outputs of the same input size; the result keeps ``a``'s
    geometry fields, and ``b``'s boxes get the index :data:`PASTED`.
    """
    if a.image.shape != b.image.shape:
        raise ValueError(f"mixup needs images of one size, got {tuple(a.image.shape)} and {tuple(b.image.shape)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the mixup weight must be in [0, 1], got {weight}")
    return replace(
        a,
        image=a.image * weight + b.image * (1.0 - weight),
        boxes=torch.cat([a.boxes, b.boxes]),
        labels=torch.cat([a.labels, b.labels]),
        indices=torch.cat([a.indices, torch.full_like(b.indices, PASTED)]),
    )


def paste_rect(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The whole pixels ``(x0, y0, x1, y1)`` that hold the xyxy ``box``, inside an ``(h, w)``
    image."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        min(max(math.floor(x0), 0), w), min(max(math.floor(y0), 0), h),
        min(max(math.ceil(x1), 0), w), min(max(math.ceil(y1), 0), h),
    )


def visible_part(
    box: Sequence[float], covers: Sequence[Sequence[float]]
) -> tuple[float, tuple[float, float, float, float] | None]:
    """What of an xyxy ``box`` the xyxy rectangles ``covers`` leave showing.

    Exact: the box is cut into the cells of a grid on every edge of the covers inside it,
    and a cell shows when no cover holds it.

    Returns:
        ``(area that shows, tight xyxy box of it)``; ``(0.0, None)`` when nothing shows.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    # Only the covers that overlap the box cut it (the grid grows with the square of them).
    covers = [c for c in covers if c[0] < x1 and c[2] > x0 and c[1] < y1 and c[3] > y0]
    xs = sorted({x0, x1, *(min(max(float(c[i]), x0), x1) for c in covers for i in (0, 2))})
    ys = sorted({y0, y1, *(min(max(float(c[i]), y0), y1) for c in covers for i in (1, 3))})
    area, tight = 0.0, [math.inf, math.inf, -math.inf, -math.inf]
    for ca, cb in zip(xs[:-1], xs[1:], strict=True):
        for ra, rb in zip(ys[:-1], ys[1:], strict=True):
            mx, my = (ca + cb) / 2, (ra + rb) / 2
            if any(c[0] <= mx <= c[2] and c[1] <= my <= c[3] for c in covers):
                continue
            area += (cb - ca) * (rb - ra)
            tight = [min(tight[0], ca), min(tight[1], ra), max(tight[2], cb), max(tight[3], rb)]
    if area <= 0.0:
        return 0.0, None
    return area, (tight[0], tight[1], tight[2], tight[3])


def copy_paste(
    target: TransformOutput,
    source: TransformOutput,
    chosen: Sequence[int],
    *,
    min_side: float = MIN_SIDE,
    min_visible: float = MIN_VISIBLE,
) -> TransformOutput:
    """Paste the objects ``chosen`` (indices into ``source.boxes``) onto ``target``.

    Each is the rectangle of whole pixels around its box (:func:`paste_rect`), copied to the
    same place, in the order given; its box is added after ``target``'s. A rectangle also
    carries what it holds of the source's other objects: each of those is added too, cut to
    the rectangle that holds most of it, as if pasted with that rectangle, when the cut keeps
    ``min_visible`` of its area and ``min_side`` (as :func:`~.mosaic.clip_boxes` decides for
    a mosaic's tiles). Every box is then cut to the tight box of its part that the
    rectangles pasted over it (after it, for a pasted one) leave showing, and dropped when
    that part is less than ``min_visible`` of its area or narrower or shorter than
    ``min_side``.
    """
    if target.image.shape != source.image.shape:
        raise ValueError(
            f"copy-paste needs images of one size, got {tuple(target.image.shape)} and {tuple(source.image.shape)}"
        )
    size = (int(target.image.shape[-2]), int(target.image.shape[-1]))
    image = target.image.clone()
    rects = []
    for i in chosen:
        x0, y0, x1, y1 = rect = paste_rect(source.boxes[i].tolist(), size)
        image[:, y0:y1, x0:x1] = source.image[:, y0:y1, x0:x1]
        rects.append(rect)
    # (source index, box, the first of the rectangles pasted over it)
    pasted = [(int(i), source.boxes[i], k + 1) for k, i in enumerate(chosen)]
    pasted += _carried(source.boxes, chosen, rects, min_side=min_side, min_visible=min_visible)
    picked = torch.as_tensor([i for i, _, _ in pasted], dtype=torch.int64)
    pasted_boxes = [b.reshape(1, 4) for _, b, _ in pasted]
    boxes = torch.cat([target.boxes.reshape(-1, 4), *pasted_boxes])
    labels = torch.cat([target.labels, source.labels[picked]])
    indices = torch.cat([target.indices, torch.full((len(pasted),), PASTED, dtype=torch.int64)])
    first_pasted = len(target.boxes)
    kept, cut = [], []
    for k, box in enumerate(boxes.tolist()):
        over = rects if k < first_pasted else rects[pasted[k - first_pasted][2] :]
        area = (box[2] - box[0]) * (box[3] - box[1])
        shows, tight = visible_part(box, over)
        if tight is None or shows < min_visible * area or min(tight[2] - tight[0], tight[3] - tight[1]) < min_side:
            continue
        kept.append(k)
        cut.append(tight)
    keep = torch.as_tensor(kept, dtype=torch.int64)
    return replace(
        target,
        image=image,
        boxes=torch.tensor(cut, dtype=torch.float32).reshape(-1, 4),
        labels=labels[keep],
        indices=indices[keep],
    )


def _carried(
    boxes: torch.Tensor, chosen: Sequence[int], rects: Sequence[tuple[int, int, int, int]], *,
    min_side: float, min_visible: float,
) -> list[tuple[int, torch.Tensor, int]]:
    """The source's objects outside ``chosen`` that the pasted ``rects`` carry: ``(index,
    box cut to the rectangle holding most of it, the index of the rectangles pasted after
    that one)`` for each whose cut keeps ``min_visible`` of its area and ``min_side``."""
    carried = []
    taken = {int(i) for i in chosen}
    for j in (j for j in range(len(boxes)) if j not in taken):
        best: tuple[float, torch.Tensor, int] | None = None
        for k, rect in enumerate(rects):
            cut, keep = clip_boxes(boxes[j : j + 1], rect, min_side=min_side, min_visible=min_visible)
            area = float((cut[0, 2] - cut[0, 0]) * (cut[0, 3] - cut[0, 1]))
            if bool(keep[0]) and (best is None or area > best[0]):
                best = (area, cut[0], k + 1)
        if best is not None:
            carried.append((j, best[1], best[2]))
    return carried


@dataclass(frozen=True)
class MixAugment:
    """How often each combining augmentation applies to a training item, and its settings.

    For an item: mosaic with probability ``mosaic_prob`` (three other images drawn at
    random), then the training transform; then mixup with another item made the same way
    (mosaic or not, transformed) with probability ``mixup_prob``; then copy-paste of a random
    non-empty subset of the objects of another such item with probability
    ``copy_paste_prob``. Every draw comes from the item's generator, so an item is a pure
    function of ``(epoch seed, index)`` as without these augmentations.

    Attributes:
        mosaic_prob, mixup_prob, copy_paste_prob: probabilities in [0, 1] (0: off).
        mixup_alpha: the Beta distribution's parameter for the mixup weight (32, ultralytics'
            value, keeps the weight near 0.5).
        centre_range: the mosaic centre, as a share of the output's width and height.
        min_side, min_visible: when a cut box is dropped (:func:`.mosaic.clip_boxes`).
    """

    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0
    copy_paste_prob: float = 0.0
    mixup_alpha: float = 32.0
    centre_range: tuple[float, float] = (0.25, 0.75)
    min_side: float = MIN_SIDE
    min_visible: float = MIN_VISIBLE

    def __post_init__(self) -> None:
        for name in ("mosaic_prob", "mixup_prob", "copy_paste_prob", "min_visible"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.mixup_alpha > 0:
            raise ValueError(f"mixup_alpha must be positive, got {self.mixup_alpha}")
        low, high = self.centre_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"centre_range must satisfy 0 <= low <= high <= 1, got {self.centre_range}")
        if self.min_side < 0:
            raise ValueError(f"min_side must be >= 0, got {self.min_side}")

    @property
    def active(self) -> bool:
        return max(self.mosaic_prob, self.mixup_prob, self.copy_paste_prob) > 0

    def expected_reads(self) -> float:
        """Images read and augmented for one item, on average (1 without these augmentations)."""
        single = 1.0 + 3.0 * self.mosaic_prob
        return single * (1.0 + self.mixup_prob + self.copy_paste_prob)

    def __call__(
        self,
        first: LabelledImage,
        index: int,
        *,
        read: Reader,
        count: int,
        transform: TrainTransform,
        generator: torch.Generator | None = None,
    ) -> TransformOutput:
        """Item ``index`` of ``count`` (its image read as ``first``), other images through
        ``read(j)``, each image augmented by ``transform`` with ``generator``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        out = self._single(first, index, read, count, transform, rng, generator)
        if rng.random() < self.mixup_prob:
            j = _other(index, count, rng)
            other = self._single(read(j), j, read, count, transform, rng, generator)
            out = mixup(out, other, float(rng.beta(self.mixup_alpha, self.mixup_alpha)))
        if rng.random() < self.copy_paste_prob:
            j = _other(index, count, rng)
            source = self._single(read(j), j, read, count, transform, rng, generator)
            n = len(source.boxes)
            if n:
                chosen = rng.permutation(n)[: int(rng.integers(1, n + 1))]
                out = copy_paste(
                    out, source, [int(c) for c in chosen], min_side=self.min_side, min_visible=self.min_visible
                )
        return out

    def _single(
        self, first: LabelledImage, index: int, read: Reader, count: int, transform: TrainTransform,
        rng: np.random.Generator, generator: torch.Generator | None,
    ) -> TransformOutput:
        """One image (a mosaic of it and three others with ``mosaic_prob``), transformed."""
        item = first
        if rng.random() < self.mosaic_prob:
            others = [read(_other(index, count, rng)) for _ in range(3)]
            out_h, out_w = transform.input_size
            low, high = self.centre_range
            centre = (round(out_w * rng.uniform(low, high)), round(out_h * rng.uniform(low, high)))
            fill = [round(255 * m) for m in transform.mean]
            item = mosaic(
                [first, *others], transform.input_size, centre, fill=fill, min_side=self.min_side,
                min_visible=self.min_visible,
            )
        return transform(item.image, item.boxes, item.labels, generator)


def _other(index: int, count: int, rng: np.random.Generator) -> int:
    """A random index of ``count`` other than ``index`` (``index`` itself when it is alone)."""
    if count <= 1:
        return index
    return (index + 1 + int(rng.integers(count - 1))) % count
