"""Training targets and the EfficientDet loss (docs/model-reference.md, section 3).

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
from typing import Any

import torch
import torch.nn.functional as F
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
        """The :class:`~efficientdet.detection.matcher.Matcher` these settings describe."""
        return Matcher(
            self.match_threshold, self.unmatched_threshold, self.force_match, self.force_match_ties
        )


# Elements per block in the summed focal loss: the temporaries of a block stay in the CPU caches.
_FOCAL_BLOCK = 1 << 18


def _focal_values(x: Tensor, positive: Tensor, alpha: float, gamma: float) -> Tensor:
    """Focal loss of logits ``x`` against the 0/1 mask ``positive``, element-wise.

    With ``z`` the logit of the right answer (``x`` for the true class, ``-x`` elsewhere),
    ``log p_t = logsigmoid(z)`` and ``log(1 - p_t) = log p_t - z``, so the loss is
    ``-alpha_t * exp(gamma * (log p_t - z)) * log p_t``.
    """
    z = torch.where(positive, x, -x)
    log_p = F.logsigmoid(z)
    loss = torch.exp((log_p - z) * gamma)  # (1 - p_t) ** gamma
    return loss.mul_(log_p).mul_(torch.where(positive, -alpha, alpha - 1.0))


def _focal_gradient(x: Tensor, positive: Tensor, alpha: float, gamma: float) -> Tensor:
    """d(focal loss) / dx element-wise: in ``z``,
    ``alpha_t * (1 - p_t) ** gamma * (gamma * p_t * log p_t - (1 - p_t))``, times dz/dx = +-1."""
    z = torch.where(positive, x, -x)
    log_p = F.logsigmoid(z)
    p = log_p.exp()
    grad = (p * log_p).mul_(gamma).sub_(1.0 - p).mul_(torch.exp((log_p - z) * gamma))
    return grad.mul_(torch.where(positive, alpha, alpha - 1.0))


class _SigmoidFocalLoss(torch.autograd.Function):
    """Element-wise focal loss with a hand-written backward: only the inputs are kept for it,
    about half the time and a fraction of the memory of autograd through the textbook formula."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, positive: Tensor, alpha: float, gamma: float) -> Tensor:
        ctx.save_for_backward(logits, positive)
        ctx.alpha, ctx.gamma = alpha, gamma
        return _focal_values(logits, positive, alpha, gamma)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        logits, positive = ctx.saved_tensors
        return _focal_gradient(logits, positive, ctx.alpha, ctx.gamma).mul_(grad), None, None, None


class _FocalLossSum(torch.autograd.Function):
    """``sum_{anchors kept, classes} focal(logits, one_hot(labels))`` in blocks of anchors.

    The batch's class logits are large (D0 at 512, batch 8: 35M values); going through them a
    block at a time keeps every temporary in cache and never builds the one-hot targets, which
    is several times faster on CPU than whole-tensor element-wise ops.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, labels: Tensor, keep: Tensor, alpha: float, gamma: float
    ) -> Tensor:
        rows = max(1, _FOCAL_BLOCK // logits.shape[1])
        classes = torch.arange(logits.shape[1], device=logits.device)
        total = logits.new_zeros(())
        for start in range(0, logits.shape[0], rows):
            block = slice(start, start + rows)
            positive = labels[block, None] == classes
            values = _focal_values(logits[block], positive, alpha, gamma)
            total += values.sum(dim=1).mul_(keep[block]).sum()
        ctx.save_for_backward(logits, labels, keep)
        ctx.alpha, ctx.gamma, ctx.rows = alpha, gamma, rows
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        logits, labels, keep = ctx.saved_tensors
        classes = torch.arange(logits.shape[1], device=logits.device)
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            block = slice(start, start + ctx.rows)
            positive = labels[block, None] == classes
            g = _focal_gradient(logits[block], positive, ctx.alpha, ctx.gamma)
            out[block] = g.mul_(keep[block, None]).mul_(grad)
        return out, None, None, None, None


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 1.5) -> Tensor:
    """Element-wise sigmoid focal loss ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``.

    Equal to ``torchvision.ops.sigmoid_focal_loss(..., reduction="none")`` for 0/1 targets.

    Args:
        logits: ``Tensor[...]`` raw class scores (floating point).
        targets: ``Tensor[...]`` of the same shape, 1 (or True) for the true class and 0
            elsewhere.

    Returns:
        ``Tensor[...]`` unreduced loss.
    """
    positive = targets if targets.dtype == torch.bool else targets > 0.5
    return _SigmoidFocalLoss.apply(logits, positive.expand_as(logits), alpha, gamma)


def focal_loss_sum(
    logits: Tensor, labels: Tensor, keep: Tensor, alpha: float = 0.25, gamma: float = 1.5
) -> Tensor:
    """``sum(focal_loss(logits, one_hot(labels)) * keep[:, None])`` without the one-hot tensor.

    Args:
        logits: ``Tensor[M, C]`` raw class scores.
        labels: ``Tensor[M]`` int64, the class of each row; any value outside ``0..C-1`` (the
            matcher's negative sentinels) means no class.
        keep: ``Tensor[M]`` float weights of the rows (0 drops an ignored anchor).

    Returns:
        The scalar sum.
    """
    return _FocalLossSum.apply(logits, labels, keep.to(logits.dtype), alpha, gamma)


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
        :data:`~efficientdet.detection.matcher.BELOW_LOW_THRESHOLD` for negatives and
        :data:`~efficientdet.detection.matcher.BETWEEN_THRESHOLDS` for ignored anchors.
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

    # sentinels (negative values) match no class; anchors between the thresholds are ignored
    class_loss = focal_loss_sum(
        logits.reshape(-1, num_classes), cls_targets.reshape(-1),
        (cls_targets != BETWEEN_THRESHOLDS).reshape(-1), alpha=config.alpha, gamma=config.gamma,
    ) / normalizer

    box_loss_all = huber_loss(deltas, box_targets.to(deltas.dtype), delta=config.huber_delta)
    box_loss = (box_loss_all * positive.unsqueeze(-1)).sum() / (normalizer * 4.0)

    total = class_loss + config.box_loss_weight * box_loss
    return {"loss": total, "class_loss": class_loss, "box_loss": box_loss}
