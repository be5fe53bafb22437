"""The model table as explicit rows: names to configurations, ``get_config`` / ``list_models``.

The registry is data; nothing here builds a network (that is
:func:`efficientdet.modeling.factory.create_model`). The released configurations depart from
the paper's scaling rules in places (D5 keeps BiFPN depth 7, D6/D7 reuse B6, D7x adds P8), so
every row is written out and tested.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config import ADVPROP_MEAN, ADVPROP_STD, LITE_MEAN, LITE_STD, AnchorConfig, ModelConfig

_REGISTRY: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig) -> ModelConfig:
    """Add a configuration under ``config.name``; a duplicate name raises."""
    if config.name in _REGISTRY:
        raise ValueError(f"model {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered configuration ``name`` with ``overrides`` applied.

    Unknown names raise a ValueError listing close matches.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see efficientdet.list_models())")
    config = _REGISTRY[name]
    if "anchors" in overrides and isinstance(overrides["anchors"], dict):
        overrides["anchors"] = AnchorConfig(**overrides["anchors"])
    return replace(config, **overrides) if overrides else config


# ---- the table (docs/model-reference.md, section 1) ----------------------------------------------------
# (phi, input, BiFPN W, BiFPN D, head D, fusion, anchor scale, max level)
_D_ROWS: dict[str, tuple[int, int, int, int, str, float, int]] = {
    "d0": (512, 64, 3, 3, "fast", 4.0, 7),
    "d1": (640, 88, 4, 3, "fast", 4.0, 7),
    "d2": (768, 112, 5, 3, "fast", 4.0, 7),
    "d3": (896, 160, 6, 4, "fast", 4.0, 7),
    "d4": (1024, 224, 7, 4, "fast", 4.0, 7),
    "d5": (1280, 288, 7, 4, "fast", 4.0, 7),
    "d6": (1280, 384, 8, 5, "sum", 4.0, 7),
    "d7": (1536, 384, 8, 5, "sum", 5.0, 7),
    "d7x": (1536, 384, 8, 5, "sum", 4.0, 8),
}
_D_BACKBONE = {
    "d0": "b0", "d1": "b1", "d2": "b2", "d3": "b3", "d4": "b4",
    "d5": "b5", "d6": "b6", "d7": "b6", "d7x": "b7",
}
_ADVPROP = ("d0", "d1", "d2", "d3", "d4", "d5")
# (backbone, input, BiFPN W, BiFPN D, head D, anchor scale)
_LITE_ROWS: dict[str, tuple[str, int, int, int, int, float]] = {
    "lite0": ("lite0", 320, 64, 3, 3, 3.0),
    "lite1": ("lite1", 384, 88, 4, 3, 3.0),
    "lite2": ("lite2", 448, 112, 5, 3, 3.0),
    "lite3": ("lite3", 512, 160, 6, 4, 4.0),
    "lite3x": ("lite3", 640, 200, 6, 4, 3.0),
    "lite4": ("lite4", 640, 224, 7, 4, 4.0),
}


def _register_table(register: Callable[[ModelConfig], ModelConfig]) -> None:
    for key, (size, width, depth, head, fusion, scale, max_level) in _D_ROWS.items():
        backbone = _D_BACKBONE[key]
        common: dict[str, Any] = dict(
            image_size=(size, size), fpn_channels=width, fpn_repeats=depth, head_repeats=head,
            fusion=fusion, max_level=max_level, anchors=AnchorConfig(anchor_scale=scale),
        )
        # TF SAME padding, redundant conv bias before BN: what the official weights need.
        register(ModelConfig(
            name=f"tf_efficientdet_{key}", backbone=f"tf_efficientnet_{backbone}",
            padding="same", redundant_bias=True, backbone_drop_path=0.2, **common,
        ))
        # PyTorch-native symmetric padding, no redundant bias.
        # AdvProp + AutoAugment weights (D0-D5): the same network on inputs in [-1, 1].
        if key in _ADVPROP:
            register(ModelConfig(
                name=f"tf_efficientdet_{key}_ap", backbone=f"tf_efficientnet_{backbone}",
                padding="same", redundant_bias=True, backbone_drop_path=0.2,
                mean=ADVPROP_MEAN, std=ADVPROP_STD, **common,
            ))
        register(ModelConfig(
            name=f"efficientdet_{key}", backbone=f"efficientnet_{backbone}",
            padding="symmetric", redundant_bias=False,
            backbone_drop_path=0.1 if key == "d0" else 0.2, **common,
        ))
    for key, (backbone, size, width, depth, head, scale) in _LITE_ROWS.items():
        register(ModelConfig(
            name=f"tf_efficientdet_{key}", backbone=f"tf_efficientnet_{backbone}",
            image_size=(size, size), fpn_channels=width, fpn_repeats=depth, head_repeats=head,
            fusion="sum", act="relu6", padding="same", redundant_bias=True,
            backbone_drop_path=0.0 if key == "lite0" else 0.2,
            anchors=AnchorConfig(anchor_scale=scale), mean=LITE_MEAN, std=LITE_STD,
        ))
    # A tiny model for tests and CI: timm's test EfficientNet, 16 channels, one repeat, 128 px.
    register(ModelConfig(
        name="efficientdet_test", backbone="test_efficientnet", image_size=(128, 128),
        fpn_channels=16, fpn_repeats=1, head_repeats=1, padding="symmetric",
        redundant_bias=False, backbone_drop_path=0.0,
    ))


_register_table(register_model)
