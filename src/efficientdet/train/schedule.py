"""Learning-rate schedule: linear warm-up, then cosine decay (or constant)."""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float = 0.1,
    schedule: str = "cosine",
    min_lr_factor: float = 0.0,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warm-up goes linearly from ``warmup_factor * base_lr`` to ``base_lr`` over
    ``warmup_steps``; then cosine decay to ``min_lr_factor * base_lr`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (warmup_factor + (1.0 - warmup_factor) * step / warmup_steps)
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_lr_factor
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
