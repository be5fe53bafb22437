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
        # (model, its tensors paired with ours), built on the first update: walking the module
        # tree every step costs more than the averaging itself on a small model.
        self._pairs: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                           list[torch.Tensor]] | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def _paired(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        if self._pairs is None or self._pairs[0] is not model:
            ema_params = dict(self.module.named_parameters())
            ema_buffers = dict(self.module.named_buffers())
            params = [(ema_params[n], p.detach()) for n, p in model.named_parameters()]
            buffers = [(ema_buffers[n], b) for n, b in model.named_buffers()]
            self._pairs = (
                model,
                [e for e, _ in params], [p for _, p in params],
                [e for e, _ in buffers], [b for _, b in buffers],
            )
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        ema_params, params, ema_buffers, buffers = self._paired(model)
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ours, theirs in zip(ema_buffers, buffers, strict=True):
            ours.copy_(theirs)

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
