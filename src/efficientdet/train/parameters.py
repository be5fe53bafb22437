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


def first_trainable_block(frozen_stages: int) -> int:
    """The index in ``backbone.blocks`` of the first block that trains when the first
    ``frozen_stages`` stages of :func:`backbone_stages` are frozen: the stem is stage 0, so
    ``blocks[frozen_stages - 1]`` (-1 when nothing is frozen)."""
    return frozen_stages - 1


def set_frozen_bn_eval(modules: list[nn.Module]) -> None:
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.eval()


def parameter_groups(
    model: nn.Module, weight_decay: float, backbone_lr_factor: float = 1.0
) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in optimiser groups.

    Weight decay on conv/linear weights only; none on BN parameters, biases or fusion
    weights. Each group carries ``"lr_factor"``, the multiple of the schedule's learning rate
    it trains at: ``backbone_lr_factor`` for the parameters of ``model.backbone``, 1 for the
    rest. With a factor of 1 (or nothing of the backbone trainable) there are the two groups
    of old; otherwise two more for the backbone.
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    split = backbone_lr_factor != 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (False, True): [], (False, False): [], (True, True): [], (True, False): [],
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.endswith(".bias"))
        groups[(split and id(p) in in_backbone, decays)].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0,
         "lr_factor": backbone_lr_factor if slow else 1.0}
        for (slow, decays), params in groups.items()
        if params or not slow
    ]
