"""Which parameters train: backbone stages to freeze, frozen batch norms, and the optimiser's
weight-decay groups."""

from __future__ import annotations

from typing import Any

from torch import nn


def backbone_stages(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone split into stages, input side first: the stem, then each block group."""
    stem = [m for name in ("conv_stem", "bn1") if (m := getattr(backbone, name, None)) is not None]
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        return [[backbone]]
    return [stem, *[[b] for b in blocks]]


def freeze_modules(modules: list[nn.Module]) -> list[nn.Module]:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    return modules


def set_frozen_bn_eval(modules: list[nn.Module]) -> None:
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.eval()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; none on BN parameters, biases or fusion weights."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
