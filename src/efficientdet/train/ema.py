"""Exponential moving average of model weights (used for evaluation and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after each optimizer step.

    With ``warmup`` the decay starts low and ramps as ``min(decay, (1 + n) / (10 + n))``, so
    short runs are not dominated by the initial weights (0.9998 averages over ~5,000 steps).
    Buffers (BN running statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach(), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
