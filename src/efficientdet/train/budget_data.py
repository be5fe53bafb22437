"""What the budget recipe reads from a training set before it plans: counts, the box sizes
at a letterboxed input, and which classes look the same mirrored (for the flips)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import DetectionData

FLIP_RATIO = 1.5  # a class is asymmetric when mirrored halves differ this much more


@dataclass(frozen=True)
class DataSummary:
    """What the plan needs to know about a training set.

    Attributes:
        num_images, num_boxes, num_classes: counts of the training split.
        num_val: validation images (0 when there is no validation split).
        boxes: every box ``Tensor[N, 4]`` xyxy scaled to a ``1 x 1`` letterboxed input
            (multiply by the input side for pixels).
        asymmetric: class names whose average crop does not look the same mirrored.
        symmetric_known: classes with enough boxes to tell.
    """

    num_images: int
    num_boxes: int
    num_classes: int
    num_val: int
    boxes: torch.Tensor
    asymmetric: tuple[str, ...] = ()
    symmetric_known: int = 0

    def boxes_at(self, side: int) -> torch.Tensor:
        return self.boxes * side

    def median_side(self, side: int) -> float:
        return self.side_quantile(side, 0.5)

    def side_quantile(self, side: int, q: float) -> float:
        """The ``q`` quantile of the box sides ``sqrt(w h)`` in pixels of a ``side`` input."""
        if not len(self.boxes):
            return 0.0
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]) * side
        return float(torch.quantile((wh[:, 0] * wh[:, 1]).sqrt(), q))



def _letterbox_boxes(data: DetectionData) -> torch.Tensor:
    """Every box of ``data`` as xyxy of a ``1 x 1`` letterboxed input."""
    parts = []
    for s in data.samples:
        if s.num_boxes:
            parts.append(s.boxes.float() / max(s.height, s.width))
    return torch.cat(parts) if parts else torch.zeros(0, 4)


def mirror_asymmetry(
    data: DetectionData, *, max_images: int = 150, max_crops: int = 80, side: int = 24, seed: int = 0
) -> dict[int, float]:
    """How differently each class looks mirrored, from its average crop.

    The crops of a class (edge strength of the grey crop, ``side x side``, each normalised
    to zero mean and unit variance) are split into two random halves with means ``A`` and ``B``. If mirrored
    objects of the class are as likely as the originals (cars facing either way), the mirror
    image of ``B`` is another draw of ``B`` and ``|A - flip(B)|`` is about ``|A - B|``; for
    digits, letters or signs it is much larger.

    Returns:
        label -> ``|A - flip(B)| / |A - B|`` for classes with at least 8 crops.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.samples))[:max_images]
    crops: dict[int, list[np.ndarray]] = {}
    for index in order:
        sample = data.samples[int(index)]
        if not sample.num_boxes:
            continue
        labels = sample.labels.tolist()
        if all(len(crops.get(label, ())) >= max_crops for label in labels):
            continue
        try:
            image = sample.load_image().convert("L")
        except OSError:
            continue
        for box, label in zip(sample.boxes.tolist(), labels, strict=True):
            if len(crops.setdefault(label, [])) >= max_crops:
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            pixels = np.asarray(image.crop((x0, y0, x1, y1)).resize((side, side)), dtype=np.float32)
            # Edge strength, not brightness: the same shape drawn dark on light or light on
            # dark must not average away.
            gy, gx = np.gradient(pixels)
            edges = np.hypot(gx, gy)
            spread = float(edges.std())
            if spread < 1e-3:
                continue
            crops[label].append((edges - edges.mean()) / spread)
    ratios = {}
    for label, items in crops.items():
        if len(items) < 8:
            continue
        stack = np.stack(items)[rng.permutation(len(items))]
        half = len(stack) // 2
        a, b = stack[:half].mean(axis=0), stack[half : 2 * half].mean(axis=0)
        same = float(np.linalg.norm(a - b))
        mirrored = float(np.linalg.norm(a - b[:, ::-1]))
        ratios[label] = mirrored / max(same, 1e-6)
    return ratios


def summarize_data(train: DetectionData, val: DetectionData | None) -> DataSummary:
    """Counts, box sizes and mirror symmetry of a training split."""
    ratios = mirror_asymmetry(train)
    asymmetric = tuple(train.class_names[k] for k, r in sorted(ratios.items()) if r > FLIP_RATIO)
    return DataSummary(
        num_images=len(train.samples),
        num_boxes=sum(s.num_boxes for s in train.samples),
        num_classes=train.num_classes,
        num_val=len(val.samples) if val is not None else 0,
        boxes=_letterbox_boxes(train),
        asymmetric=asymmetric,
        symmetric_known=len(ratios),
    )
