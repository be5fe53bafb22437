"""Typed, frozen configuration for the EfficientDet family.

Every architectural choice lives here as data. Layers read these objects; nothing reads
environment variables or module-level switches. Override with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Closed sets of options. Anything else raises a ValueError naming the choices.
FUSION_METHODS = ("fast", "softmax", "sum", "channel_fast", "channel_softmax")
ACTIVATIONS = ("swish", "relu6", "relu")
PADDINGS = ("same", "symmetric")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs normalised as (x - 127) / 128 in 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# The AdvProp-trained detectors (tf_efficientdet_d*_ap) take pixels scaled to [-1, 1].
ADVPROP_MEAN = (0.5,) * 3
ADVPROP_STD = (0.5,) * 3

# The official weights were trained with aspect ratios as (w, h) multipliers.
DEFAULT_ASPECT_RATIOS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}")


def normalize_aspect_ratios(
    ratios: tuple[float | tuple[float, float], ...] | list,
) -> tuple[tuple[float, float], ...]:
    """Accept both official forms of aspect ratios and return ``(w, h)`` multiplier pairs.

    A pair ``(w, h)`` is kept as given (the form the official weights were trained with:
    ``(1.4, 0.7)``). A scalar ``a`` means ``(sqrt(a), 1 / sqrt(a))`` (the newer form: ``2.0``).
    """
    pairs = []
    for r in ratios:
        if isinstance(r, (tuple, list)):
            if len(r) != 2 or min(r) <= 0:
                raise ValueError(f"aspect ratio pair {r!r} must be two positive numbers (w, h)")
            pairs.append((float(r[0]), float(r[1])))
        else:
            if r <= 0:
                raise ValueError(f"aspect ratio {r!r} must be positive")
            pairs.append((math.sqrt(r), 1.0 / math.sqrt(r)))
    if not pairs:
        raise ValueError("at least one aspect ratio is needed")
    return tuple(pairs)


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor layout: per location ``num_scales`` octave scales x ``len(aspect_ratios)`` ratios.

    Base size of an anchor = ``anchor_scale * stride * 2 ** (scale_index / num_scales)``.
    """

    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = DEFAULT_ASPECT_RATIOS
    anchor_scale: float = 4.0

    def __post_init__(self) -> None:
        if self.num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {self.num_scales}")
        if self.anchor_scale <= 0:
            raise ValueError(f"anchor_scale must be positive, got {self.anchor_scale}")
        object.__setattr__(self, "aspect_ratios", normalize_aspect_ratios(self.aspect_ratios))

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (A)."""
        return self.num_scales * len(self.aspect_ratios)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one detector network.

    Attributes:
        name: registry name (or a free name for custom configurations).
        backbone: timm model name with ``features_only`` support.
        image_size: network input ``(H, W)`` (see :func:`check_image_size`).
        fpn_channels: width W of the pyramid and heads.
        fpn_repeats: number of neck cells (BiFPN D).
        head_repeats: separable conv repeats in class/box heads (D_head).
        neck: feature network name (``"bifpn"`` is the paper's).
        fusion: how a fusion node combines its inputs, one of :data:`FUSION_METHODS`.
        act: activation, one of :data:`ACTIVATIONS`.
        padding: ``"same"`` emulates TensorFlow SAME padding (official weights),
            ``"symmetric"`` is PyTorch-native.
        redundant_bias: conv bias directly before BN, as the official TF models have.
        mean, std: input normalisation in 0..1 pixel units (multiplied by 255 for 0..255).
    """

    name: str
    backbone: str
    image_size: tuple[int, int]
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    num_classes: int = 90
    min_level: int = 3
    max_level: int = 7
    neck: str = "bifpn"
    fusion: str = "fast"
    act: str = "swish"
    padding: str = "same"
    redundant_bias: bool = True
    separable: bool = True
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    backbone_drop_path: float = 0.2
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        _check_choice("fusion", self.fusion, FUSION_METHODS)
        _check_choice("act", self.act, ACTIVATIONS)
        _check_choice("padding", self.padding, PADDINGS)
        size = tuple(int(s) for s in self.image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be (H, W), got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        if not 3 <= self.min_level <= self.max_level:
            raise ValueError(
                f"levels must satisfy 3 <= min_level <= max_level, got {self.min_level}..{self.max_level}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for n in ("fpn_channels", "fpn_repeats", "head_repeats"):
            if getattr(self, n) < 1:
                raise ValueError(f"{n} must be >= 1, got {getattr(self, n)}")
        check_image_size(size, self.max_level)

    @property
    def levels(self) -> tuple[int, ...]:
        """Pyramid levels, e.g. ``(3, 4, 5, 6, 7)``."""
        return tuple(range(self.min_level, self.max_level + 1))

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def size_divisor(self) -> int:
        """Input sides that are multiples of this (``2 ** max_level``) give exact strides."""
        return 2**self.max_level


def check_image_size(image_size: tuple[int, int], max_level: int) -> None:
    """Raise a ValueError unless ``image_size`` is two positive integer sides.

    Sides need not be multiples of ``2 ** max_level``: as in the official code, each level's
    feature map is ``ceil(side / 2)`` of the one below, and anchors use the resulting
    (possibly fractional) strides. Multiples of ``2 ** max_level`` keep strides exact.
    """
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image size must be two positive integers (H, W), got {tuple(image_size)}")
    del max_level


def feature_sizes(image_size: tuple[int, int], max_level: int) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` for levels ``0..max_level``; each level halves the one below, rounding up
    (what stride-2 SAME convs and pools produce)."""
    h, w = int(image_size[0]), int(image_size[1])
    sizes = [(h, w)]
    for _ in range(max_level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


def round_image_size(image_size: tuple[int, int], divisor: int) -> tuple[int, int]:
    """Round each side up to the nearest multiple of ``divisor``."""
    h, w = (max(divisor, -(-int(s) // divisor) * divisor) for s in image_size)
    return h, w


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """A :class:`ModelConfig` as plain JSON/YAML values (tuples become lists when dumped)."""
    return asdict(config)


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """The inverse of :func:`model_config_to_dict`; unknown fields raise a ValueError naming them."""
    data = dict(data)
    anchors = dict(data.pop("anchors", None) or {})
    if anchors.get("aspect_ratios"):
        anchors["aspect_ratios"] = tuple(
            tuple(r) if isinstance(r, (list, tuple)) else r for r in anchors["aspect_ratios"]
        )
    else:
        anchors.pop("aspect_ratios", None)
    for key in ("image_size", "mean", "std"):
        if key in data:
            data[key] = tuple(data[key])
    unknown = sorted(set(data) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"model configuration has unknown fields {unknown}")
    unknown_anchor = sorted(set(anchors) - set(AnchorConfig.__dataclass_fields__))
    if unknown_anchor:
        raise ValueError(f"anchor configuration has unknown fields {unknown_anchor}")
    return ModelConfig(**data, anchors=AnchorConfig(**anchors))
