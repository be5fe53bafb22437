"""Training targets and the EfficientDet loss (REFERENCE.md section 3).

Classification: sigmoid focal loss (alpha 0.25, gamma 1.5) summed over anchors and classes.
Regression: Huber loss (delta 0.1) on the ``(dy, dx, dh, dw)`` deltas of positive anchors.
As in the official code, both sums run over the whole batch and are normalised by the
batch's total number of positive anchors plus one; the box loss is further divided by 4
(values per box) and weighted x50 in the total::

    class_loss = sum(focal) / (P + 1)
    box_loss = sum(huber over positives) / ((P + 1) * 4)
    loss = class_loss + 50 * box_loss
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from .boxes import box_iou, encode, flatten_level_outputs
from .matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher


@dataclass(frozen=True)
class LossConfig:
    """Loss and anchor-matching settings; the defaults are the official recipe.

    Attributes:
        alpha: focal-loss weight of positive targets (negatives get ``1 - alpha``).
        gamma: focal-loss focusing exponent.
        huber_delta: Huber loss threshold between the quadratic and linear parts.
        box_loss_weight: weight of the box loss in the total loss.
        match_threshold: IoU at or above which an anchor is positive.
        unmatched_threshold: IoU below which an anchor is negative; anchors in between are
            ignored. ``None`` means equal to ``match_threshold`` (no ignore band).
        force_match: match every ground-truth box to its best anchor.
        force_match_ties: force-match all anchors tied at a box's best IoU (not official).
    """

    alpha: float = 0.25
    gamma: float = 1.5
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    match_threshold: float = 0.5
    unmatched_threshold: float | None = None
    force_match: bool = True
    force_match_ties: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be positive, got {self.huber_delta}")
        if self.box_loss_weight < 0:
            raise ValueError(f"box_loss_weight must be >= 0, got {self.box_loss_weight}")
        self.matcher()  # validates the thresholds

    def matcher(self) -> Matcher:
        """The :class:`~efficientdet.matcher.Matcher` these settings describe."""
        return Matcher(
            self.match_threshold, self.unmatched_threshold, self.force_match, self.force_match_ties
        )


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 1.5) -> Tensor:
    """Element-wise sigmoid focal loss ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``.

    Args:
        logits: ``Tensor[...]`` raw class scores.
        targets: ``Tensor[...]`` of the same shape, 1 for the true class and 0 elsewhere.

    Returns:
        ``Tensor[...]`` unreduced loss.
    """
    return torchvision.ops.sigmoid_focal_loss(
        logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none"
    )


def huber_loss(inputs: Tensor, targets: Tensor, delta: float = 0.1) -> Tensor:
    """Element-wise Huber loss: ``0.5 * e**2`` for ``|e| <= delta``, else ``delta * (|e| - delta / 2)``.

    Args:
        inputs, targets: ``Tensor[...]`` of the same shape.

    Returns:
        ``Tensor[...]`` unreduced loss.
    """
    return F.huber_loss(inputs, targets, reduction="none", delta=delta)


def build_targets(
    anchors: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    matcher: Matcher | None = None,
) -> tuple[Tensor, Tensor]:
    """Assign anchors to ground truth for a batch.

    Args:
        anchors: ``Tensor[N, 4]`` xyxy anchors in input pixels.
        targets: per image ``{"boxes": Tensor[M, 4] xyxy pixels, "labels": Tensor[M] int64}``
            with labels in ``0..C-1``; ``M`` may be 0.
        matcher: defaults to the official ``Matcher(0.5)`` with force matching.

    Returns:
        ``cls_targets``: ``Tensor[B, N]`` int64, the class label of positive anchors,
        :data:`~efficientdet.matcher.BELOW_LOW_THRESHOLD` for negatives and
        :data:`~efficientdet.matcher.BETWEEN_THRESHOLDS` for ignored anchors.
        ``box_targets``: ``Tensor[B, N, 4]`` ``(dy, dx, dh, dw)`` of the matched box for
        positive anchors, zeros elsewhere.
    """
    matcher = matcher if matcher is not None else Matcher()
    num_anchors = anchors.shape[0]
    cls_targets = torch.full(
        (len(targets), num_anchors), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device
    )
    box_targets = anchors.new_zeros((len(targets), num_anchors, 4))
    for i, target in enumerate(targets):
        boxes = target["boxes"].to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
        labels = target["labels"].to(device=anchors.device, dtype=torch.int64).reshape(-1)
        if boxes.shape[0] == 0:
            continue
        matches = matcher(box_iou(boxes, anchors))  # [N]
        positive = matches >= 0
        gt_index = matches.clamp(min=0)
        cls_targets[i] = torch.where(positive, labels[gt_index], matches)
        deltas = encode(boxes[gt_index], anchors)
        box_targets[i] = torch.where(positive.unsqueeze(-1), deltas, torch.zeros_like(deltas))
    return cls_targets, box_targets


def _flat(outputs: Sequence[Tensor] | Tensor, channels: int) -> Tensor:
    if isinstance(outputs, Tensor):
        if outputs.dim() != 3 or outputs.shape[-1] != channels:
            raise ValueError(
                f"flattened outputs must be [B, N, {channels}], got {tuple(outputs.shape)}"
            )
        return outputs
    return flatten_level_outputs(list(outputs), channels)


def compute_loss(
    class_outputs: Sequence[Tensor] | Tensor,
    box_outputs: Sequence[Tensor] | Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    num_classes: int,
    config: LossConfig | None = None,
    positives_reducer: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The official EfficientDet loss for a batch.

    Args:
        class_outputs: per level ``Tensor[B, A * C, H_l, W_l]`` (or already flattened
            ``Tensor[B, N, C]``).
        box_outputs: per level ``Tensor[B, A * 4, H_l, W_l]`` (or ``Tensor[B, N, 4]``),
            deltas in ``(dy, dx, dh, dw)`` order.
        cls_targets: ``Tensor[B, N]`` from :func:`build_targets`.
        box_targets: ``Tensor[B, N, 4]`` from :func:`build_targets`.
        num_classes: C.
        config: loss settings, defaults to the official ones.
        positives_reducer: maps this batch's positive count to the one to normalise by; in
            data-parallel training the sum over processes, so that every process's loss is
            its share of the loss of the whole global batch.

    Returns:
        ``{"loss", "class_loss", "box_loss"}`` scalar tensors, with
        ``loss = class_loss + box_loss_weight * box_loss``. Ignored anchors add nothing;
        a batch without positives gives a zero box loss and a finite class loss.
    """
    config = config if config is not None else LossConfig()
    logits = _flat(class_outputs, num_classes).float()
    deltas = _flat(box_outputs, 4).float()
    if logits.shape[:2] != cls_targets.shape or deltas.shape != box_targets.shape:
        raise ValueError(
            f"outputs and targets disagree: class outputs {tuple(logits.shape)} vs cls_targets "
            f"{tuple(cls_targets.shape)}, box outputs {tuple(deltas.shape)} vs box_targets "
            f"{tuple(box_targets.shape)} (is the anchor layout the model's?)"
        )

    positive = cls_targets >= 0  # [B, N]
    num_positives = positive.sum().to(logits.dtype)
    if positives_reducer is not None:
        num_positives = positives_reducer(num_positives)
    normalizer = num_positives + 1.0

    classes = torch.arange(num_classes, device=logits.device)
    one_hot = cls_targets.unsqueeze(-1) == classes  # [B, N, C]; sentinels match no class
    cls_loss = focal_loss(logits, one_hot, alpha=config.alpha, gamma=config.gamma)
    cls_loss = cls_loss * (cls_targets != BETWEEN_THRESHOLDS).unsqueeze(-1)
    class_loss = cls_loss.sum() / normalizer

    box_loss_all = huber_loss(deltas, box_targets.to(deltas.dtype), delta=config.huber_delta)
    box_loss = (box_loss_all * positive.unsqueeze(-1)).sum() / (normalizer * 4.0)

    total = class_loss + config.box_loss_weight * box_loss
    return {"loss": total, "class_loss": class_loss, "box_loss": box_loss}
