"""How well the anchors fit a dataset's boxes, and anchors fitted to them.

A ground-truth box trains the class and box heads through the anchors it is matched to. The
matcher (:mod:`efficientdet.detection.matcher`) makes an anchor positive for a box when their
IoU is at least 0.5; a box no anchor reaches still gets its single best anchor
(``force_match``), but through an anchor of a poor shape, and tall thin or tiny boxes then
train badly. :func:`matched_share` counts the boxes that some anchor matches at the
threshold; :func:`fit_anchors` searches the anchor scale and the aspect ratios for the
largest share.

The best IoU of a box over the whole anchor grid is found without the grid: the intersection
of two axis-aligned boxes is a product of a width that depends only on the horizontal
distance of their centres and a height that depends only on the vertical one, each
non-increasing as the centres move apart, so for each level and anchor shape the anchor
centred nearest to the box (per axis, within the grid) is the best one of that shape.

Everything here works on plain box arrays in network-input pixels (after the letterbox), so
``data`` (which never builds a network) hands the boxes to it through the command line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..config import AnchorConfig, feature_sizes
from .anchors import anchor_shapes

__all__ = [
    "AnchorFit",
    "best_anchor_iou",
    "fit_anchors",
    "fit_aspect_ratios",
    "format_anchor_fit",
    "matched_share",
    "override_args",
]

# Anchor scales tried by fit_anchors: 1 to 8 in quarter octaves.
DEFAULT_SCALE_GRID = tuple(round(2 ** (i / 4), 2) for i in range(13))
# Boxes unmatched because they are smaller than every anchor: above this share, say so.
SMALL_BOX_ADVICE_SHARE = 0.05


def _nearest_centre(centre: Tensor, stride: float, grid: int) -> Tensor:
    index = torch.floor(centre / stride).clamp(0, grid - 1)
    return (index + 0.5) * stride


def best_anchor_iou(
    boxes: Tensor,
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    config: AnchorConfig,
) -> Tensor:
    """The highest IoU of each box with any anchor of the pyramid.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in network-input pixels.
        image_size: network input ``(H, W)``.
        min_level, max_level: pyramid levels of the anchors.
        config: the anchor layout.

    Returns:
        ``Tensor[N]`` float64, what ``box_iou(boxes, generate_anchors(...)).max(1)`` gives,
        computed per level and anchor shape from the nearest anchor centre.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    boxes = boxes.reshape(-1, 4).double()
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    bcx = (boxes[:, 0] + boxes[:, 2]) / 2
    bcy = (boxes[:, 1] + boxes[:, 3]) / 2
    area = bw * bh
    best = torch.zeros(len(boxes), dtype=torch.float64)
    sizes = feature_sizes(image_size, max_level)
    for level in range(min_level, max_level + 1):
        grid_h, grid_w = sizes[level]
        stride_y, stride_x = image_size[0] / grid_h, image_size[1] / grid_w
        acx = _nearest_centre(bcx, stride_x, grid_w).unsqueeze(1)  # [N, 1]
        acy = _nearest_centre(bcy, stride_y, grid_h).unsqueeze(1)
        shapes = anchor_shapes(image_size, level, config)  # [A, 2]
        aw, ah = shapes[:, 0].unsqueeze(0), shapes[:, 1].unsqueeze(0)  # [1, A]
        iw = (torch.minimum(boxes[:, 2:3], acx + aw / 2) - torch.maximum(boxes[:, 0:1], acx - aw / 2)).clamp(min=0)
        ih = (torch.minimum(boxes[:, 3:4], acy + ah / 2) - torch.maximum(boxes[:, 1:2], acy - ah / 2)).clamp(min=0)
        inter = iw * ih
        iou = inter / (area.unsqueeze(1) + aw * ah - inter).clamp(min=1e-12)
        best = torch.maximum(best, iou.max(dim=1).values)
    return best


def matched_share(
    boxes: Tensor,
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    config: AnchorConfig,
    threshold: float = 0.5,
) -> float:
    """Share of the boxes (``Tensor[N, 4]`` xyxy input pixels) whose best anchor IoU is at
    least ``threshold`` (the matcher's positive threshold); 1.0 for no boxes."""
    if boxes.numel() == 0:
        return 1.0
    iou = best_anchor_iou(boxes, image_size, min_level, max_level, config)
    return float((iou >= threshold).double().mean())


def fit_aspect_ratios(boxes: Tensor, count: int = 3, iterations: int = 50) -> tuple[tuple[float, float], ...]:
    """``count`` aspect ratios fitted to the boxes: 1-D k-means of ``log(w / h)``.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy (any pixels: only shapes matter).
        count: number of ratios.
        iterations: k-means iterations (started at evenly spaced quantiles).

    Returns:
        ``count`` ``(w, h)`` multiplier pairs ``(sqrt(a), 1 / sqrt(a))`` with ``a`` the
        cluster's ``w / h``, sorted from wide to tall, rounded to 2 decimals.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    wh = (boxes.reshape(-1, 4)[:, 2:] - boxes.reshape(-1, 4)[:, :2]).double()
    valid = (wh > 0).all(dim=1)
    if not bool(valid.any()):
        raise ValueError("no boxes with positive width and height to fit aspect ratios to")
    log_ratio = torch.log(wh[valid, 0] / wh[valid, 1])
    quantiles = torch.tensor([(i + 0.5) / count for i in range(count)], dtype=torch.float64)
    centres = torch.quantile(log_ratio, quantiles)
    for _ in range(iterations):
        assign = (log_ratio.unsqueeze(1) - centres.unsqueeze(0)).abs().argmin(dim=1)
        for k in range(count):
            members = log_ratio[assign == k]
            if len(members):
                centres[k] = members.mean()
    pairs = []
    for c in sorted(centres.tolist(), reverse=True):
        ratio = math.exp(c)
        pairs.append((round(math.sqrt(ratio), 2), round(1 / math.sqrt(ratio), 2)))
    return tuple(pairs)


@dataclass
class AnchorFit:
    """What :func:`fit_anchors` found.

    Attributes:
        num_boxes: boxes considered.
        base: the model's own anchors and ``base_share``, the share of boxes they match.
        best: the fitted anchors and ``best_share``.
        candidates: every ``(anchor_scale, aspect_ratios, share)`` tried.
        small_share: share of the boxes that the fitted anchors leave unmatched and that are
            smaller (side ``sqrt(w h)``) than the smallest fitted anchor.
        smallest_anchor: side of the smallest fitted anchor in input pixels.
        larger_input: ``(image_size, share)``: the fitted anchors at twice the input size.
        image_size, min_level, max_level: the pyramid the fit is for.
    """

    num_boxes: int
    base: AnchorConfig
    base_share: float
    best: AnchorConfig
    best_share: float
    image_size: tuple[int, int]
    min_level: int
    max_level: int
    threshold: float = 0.5
    candidates: list[tuple[float, tuple[tuple[float, float], ...], float]] = field(default_factory=list)
    small_share: float = 0.0
    smallest_anchor: float = 0.0
    larger_input: tuple[tuple[int, int], float] | None = None

    @property
    def advice(self) -> list[str]:
        """Plain-language notes: when a P2 level or a larger input would help."""
        notes = []
        if self.small_share >= SMALL_BOX_ADVICE_SHARE:
            note = (
                f"{100 * self.small_share:.1f}% of the boxes are smaller than the smallest anchor "
                f"({self.smallest_anchor:.1f} px at P{self.min_level}) and unmatched even at the "
                f"best scale: a P{self.min_level - 1} level (stride {2 ** (self.min_level - 1)}) "
                "or a larger input would help"
            )
            if self.larger_input is not None:
                (h, w), share = self.larger_input
                note += (
                    f"; at input {h}x{w} (--image-size {h} {w}, model.image_size=[{h}, {w}]) "
                    f"the fitted anchors match {100 * share:.1f}%"
                )
            notes.append(note)
        return notes


def fit_anchors(
    boxes: Tensor,
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    base: AnchorConfig | None = None,
    *,
    threshold: float = 0.5,
    scales: Sequence[float] = DEFAULT_SCALE_GRID,
    keep_margin: float = 0.002,
) -> AnchorFit:
    """Search anchor scale and aspect ratios for the largest share of matched boxes.

    Tries every scale of ``scales`` (and the base's) with the base's aspect ratios and with
    ratios fitted to the boxes (:func:`fit_aspect_ratios`, as many as the base has, so the
    number of anchors per location and the heads' shapes stay the same). The number of
    octave scales is kept.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in network-input pixels (after the letterbox).
        image_size: network input ``(H, W)``.
        min_level, max_level: pyramid levels.
        base: the model's anchors (default :class:`AnchorConfig`).
        threshold: the matcher's positive IoU.
        scales: anchor scales to try.
        keep_margin: a candidate within this share of the best that is closer to the base
            (base ratios first, then the nearer scale) is preferred.

    Returns:
        An :class:`AnchorFit`.
    """
    base = base if base is not None else AnchorConfig()
    boxes = boxes.reshape(-1, 4).double()
    base_share = matched_share(boxes, image_size, min_level, max_level, base, threshold)
    ratio_sets = [base.aspect_ratios]
    if len(boxes):
        fitted = fit_aspect_ratios(boxes, len(base.aspect_ratios))
        if fitted != base.aspect_ratios:
            ratio_sets.append(fitted)
    scale_list = sorted({float(s) for s in scales} | {base.anchor_scale})
    candidates = []
    for ratio_index, ratios in enumerate(ratio_sets):
        for scale in scale_list:
            config = replace(base, anchor_scale=scale, aspect_ratios=ratios)
            share = matched_share(boxes, image_size, min_level, max_level, config, threshold)
            distance = (ratio_index, abs(math.log(scale / base.anchor_scale)))
            candidates.append((share, distance, config))
    top = max(c[0] for c in candidates)
    share, _, best = min(
        (c for c in candidates if c[0] >= top - keep_margin), key=lambda c: c[1]
    )
    fit = AnchorFit(
        num_boxes=len(boxes), base=base, base_share=base_share, best=best, best_share=share,
        image_size=(int(image_size[0]), int(image_size[1])), min_level=min_level,
        max_level=max_level, threshold=threshold,
        candidates=[(c[2].anchor_scale, c[2].aspect_ratios, c[0]) for c in candidates],
    )
    if len(boxes):
        shapes = anchor_shapes(fit.image_size, min_level, best)
        fit.smallest_anchor = float((shapes[:, 0] * shapes[:, 1]).sqrt().min())
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        side = (wh[:, 0] * wh[:, 1]).sqrt()
        unmatched = best_anchor_iou(boxes, image_size, min_level, max_level, best) < threshold
        fit.small_share = float((unmatched & (side < fit.smallest_anchor)).double().mean())
        if fit.small_share >= SMALL_BOX_ADVICE_SHARE:
            larger = (2 * fit.image_size[0], 2 * fit.image_size[1])
            fit.larger_input = (
                larger, matched_share(boxes * 2, larger, min_level, max_level, best, threshold)
            )
    return fit


def _number(value: float) -> str:
    return f"{value:g}"


def override_args(config: AnchorConfig) -> str:
    """``--set`` options for ``efficientdet train`` that give these anchors."""
    ratios = ", ".join(f"[{_number(w)}, {_number(h)}]" for w, h in config.aspect_ratios)
    return (
        f"--set model.anchor_scale={_number(config.anchor_scale)} "
        f"--set 'model.aspect_ratios=[{ratios}]'"
    )


def _ratios_text(ratios: tuple[tuple[float, float], ...]) -> str:
    return ", ".join(f"({_number(w)}, {_number(h)})" for w, h in ratios)


def format_anchor_fit(fit: AnchorFit) -> str:
    """The fit as text: matched shares before and after, the override line, advice."""
    h, w = fit.image_size
    lines = [
        f"  anchors at input {h}x{w}, P{fit.min_level}-P{fit.max_level}, IoU >= {fit.threshold:g}:",
        f"    model's anchors (scale {_number(fit.base.anchor_scale)}, ratios "
        f"{_ratios_text(fit.base.aspect_ratios)}): {100 * fit.base_share:.1f}% of "
        f"{fit.num_boxes} boxes matched, {100 * (1 - fit.base_share):.1f}% unmatched",
        f"    fitted anchors (scale {_number(fit.best.anchor_scale)}, ratios "
        f"{_ratios_text(fit.best.aspect_ratios)}): {100 * fit.best_share:.1f}% matched",
    ]
    if fit.best == fit.base:
        lines.append("    the model's anchors are already the best found; no override needed")
    else:
        lines.append(f"    train with: {override_args(fit.best)}")
    lines.extend(f"    note: {note}" for note in fit.advice)
    return "\n".join(lines)
