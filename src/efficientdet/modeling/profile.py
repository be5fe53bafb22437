"""Parameter and FLOP counts (the paper's table counts one multiply-add as one FLOP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig


@dataclass(frozen=True)
class ModelProfile:
    """Size and cost of one configuration at its input size."""

    name: str
    params: int
    multiply_adds: int
    image_size: tuple[int, int]

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.multiply_adds / 1e9


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, image_size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-adds of one forward pass (torch's flop counter counts two FLOPs per MAC).

    Runs on whatever device ``model`` is on; on the ``meta`` device no memory or time is spent.
    """
    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, *image_size, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def profile_config(config: ModelConfig, image_size: tuple[int, int] | None = None) -> ModelProfile:
    """Parameters and multiply-adds of ``config``, computed on the meta device (no weights)."""
    from .model import EfficientDet

    size = image_size or config.image_size
    with torch.device("meta"):
        model = EfficientDet(config)
    return ModelProfile(config.name, count_parameters(model), count_multiply_adds(model, size), size)


def info_row(config: ModelConfig) -> dict[str, Any]:
    """What ``efficientdet info`` reports for a configuration (params and FLOPs on meta)."""
    profile = profile_config(config)
    return {
        "name": config.name,
        "backbone": config.backbone,
        "params": profile.params,
        "params_m": round(profile.params_m, 3),
        "multiply_adds": profile.multiply_adds,
        "gmacs": round(profile.gmacs, 2),
        "image_size": list(config.image_size),
        "levels": [config.min_level, config.max_level],
        "bifpn_width": config.fpn_channels,
        "bifpn_depth": config.fpn_repeats,
        "head_depth": config.head_repeats,
        "neck": config.neck,
        "fusion": config.fusion,
        "activation": config.act,
        "padding": config.padding,
        "anchor_scale": config.anchors.anchor_scale,
        "num_classes": config.num_classes,
    }
