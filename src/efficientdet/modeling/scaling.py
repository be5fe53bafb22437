"""Compound scaling (paper section 4.2): one coefficient phi scales width, depth, resolution
and backbone together, for any ``phi >= 0`` (fractional included), any neck and any backbone.

The paper's rules, relative to the ``phi = 0`` point (D0: W0 = 64, D0 = 3, H0 = 3, R0 = 512,
EfficientNet-B0)::

    W_bifpn = W0 * 1.35 ** phi        rounded to the nearest multiple of 8 (ties up)
    D_bifpn = D0 + phi                rounded to the nearest integer (ties up)
    D_head  = H0 + floor(phi / 3)
    R_input = R0 + 128 * phi          rounded to the nearest multiple of 128 (ties up)
    backbone = B_phi                  B_floor(phi) for fractional phi; B7 for phi > 7

For a base whose W0 or R0 is not a multiple of 8 or 128 (Lite0's 320 px, say), the growth
over the base is what gets rounded, so ``phi = 0`` always gives the base itself.

Fractional phi: every discrete quantity takes the value nearest to its continuous rule, so
``phi = 2.5`` has depth 6 (3 + 2.5 rounds up), resolution 896 (832 is halfway between 768 and
896 and rounds up), width 64 * 1.35 ** 2.5 = 135.5 -> 136, head depth 3 and the nearest smaller
backbone, B2. Every quantity is non-decreasing in phi. Beyond phi = 7 the backbone stays at
the last rung of its ladder (B7, as D7x uses); width, depth and resolution keep growing.

Backbones: the base's backbone is the ``phi = 0`` rung. When it belongs to a known ladder
(:data:`BACKBONE_LADDERS`: ``tf_efficientnet_b0..b7``, ``efficientnet_b0..b7`` and the Lite
families) the rung moves up by ``floor(phi)``. Any other timm backbone that gives
``feature_info`` (a ResNet, a MobileNet, ...) is kept as it is and only width, depth and
resolution scale, unless a ladder is named with ``backbone_ladder``.

Where the released table departs from these rules (:func:`released_departures`, tested):

- Width: 64 * 1.35 ** phi = 64, 86.4, 116.6, 157.5, 212.6, 287.0, 387.4 for phi = 0..6.
  The nearest multiple of 8 gives 64, 88, 120, 160, 216, 288, 384; the released widths are
  64, 88, **112**, 160, **224**, 288, 384. EfficientNet's ``round_filters`` (nearest multiple
  of 8 with a 10 % floor) gives the same as the nearest multiple of 8, and no multiple-of-k
  rounding (k = 8, 16, 32, nearest, up or down) gives all seven: the official code lists the
  widths by hand. So the rule reproduces D0, D1, D3, D5 and D6 exactly and D2, D4 within one
  step of 8 (120 vs 112, 216 vs 224).
- D5: BiFPN depth 7 (rule: 8) and input 1280 (rule: 1152), as in the paper's Table 1.
- D6: BiFPN depth 8 (rule: 9). D6, D7 and D7x use plain ``sum`` fusion (the official configs);
  the rule keeps the base's fusion (``fast`` for D0).
- D7: D6's network (B6 backbone, W 384, D 8, head 5) at input 1536 with anchor scale 5.0;
  the rule for phi = 7 gives B7, W 520, D 10, 1408 px, anchor scale 4.0.
- D7x: D7's neck and head with the B7 backbone and one more level (P3-P8), anchor scale 4.0,
  input 1536.

The released D0-D7x rows stay the registered models (:mod:`efficientdet.modeling.registry`); this
module builds the configurations between and beyond them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import AnchorConfig, ModelConfig, model_config_from_dict
from .model import EfficientDet
from .necks import NECKS
from .profile import info_row
from .registry import get_config

DEFAULT_BASE = "tf_efficientdet_d0"
# Absorbs float noise in phi (0.1 * 30 = 3.0000000000000004 or 2.9999999999999996).
_EPS = 1e-9

BACKBONE_LADDERS: dict[str, tuple[str, ...]] = {
    "tf_efficientnet": tuple(f"tf_efficientnet_b{i}" for i in range(8)),
    "efficientnet": tuple(f"efficientnet_b{i}" for i in range(8)),
    "tf_efficientnet_lite": tuple(f"tf_efficientnet_lite{i}" for i in range(5)),
    "efficientnet_lite": tuple(f"efficientnet_lite{i}" for i in range(5)),
}


@dataclass(frozen=True)
class CompoundRules:
    """The compound-scaling rules; the defaults are the paper's.

    Attributes:
        width_factor: W = W0 * width_factor ** phi.
        width_divisor: widths round to the nearest multiple of this.
        depth_per_phi: D = D0 + depth_per_phi * phi, rounded to the nearest integer.
        head_depth_every: D_head = H0 + floor(phi / head_depth_every).
        resolution_step: R = R0 + resolution_step * phi on each side ...
        resolution_divisor: ... rounded to the nearest multiple of this.
    """

    width_factor: float = 1.35
    width_divisor: int = 8
    depth_per_phi: float = 1.0
    head_depth_every: int = 3
    resolution_step: int = 128
    resolution_divisor: int = 128

    def __post_init__(self) -> None:
        if self.width_factor < 1.0:
            raise ValueError(f"width_factor must be >= 1, got {self.width_factor}")
        for name in ("width_divisor", "head_depth_every", "resolution_divisor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth_per_phi < 0 or self.resolution_step < 0:
            raise ValueError("depth_per_phi and resolution_step must be >= 0")


PAPER_RULES = CompoundRules()


def round_half_up(value: float) -> int:
    """Nearest integer, halves rounded up (Python's ``round`` sends 2.5 to 2)."""
    return math.floor(value + 0.5 + _EPS)


def check_phi(phi: float) -> float:
    """``phi`` as a float; a ValueError unless it is finite and >= 0."""
    value = float(phi)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"phi must be a finite number >= 0, got {phi!r}")
    return value


def scaled_width(phi: float, base_width: int = 64, rules: CompoundRules = PAPER_RULES) -> int:
    """BiFPN / head width ``W0 * factor ** phi`` rounded to the divisor (see :func:`_grow`)."""
    grown = base_width * rules.width_factor ** check_phi(phi)
    return _grow(base_width, grown - base_width, rules.width_divisor)


def _grow(base: int, increment: float, divisor: int) -> int:
    """``base`` plus ``increment`` rounded to the nearest multiple of ``divisor``.

    Rounding the increment rather than the total keeps ``phi = 0`` at the base exactly for
    any base, and is the same as rounding the total when the base is a multiple of the
    divisor (64 and 512 for D0).
    """
    return base + divisor * round_half_up(increment / divisor)


def scaled_depth(phi: float, base_depth: int = 3, rules: CompoundRules = PAPER_RULES) -> int:
    """Neck depth (BiFPN cells) ``D0 + phi``, fractional phi rounded to the nearest integer."""
    return base_depth + round_half_up(rules.depth_per_phi * check_phi(phi))


def scaled_head_depth(phi: float, base_depth: int = 3, rules: CompoundRules = PAPER_RULES) -> int:
    """Head depth ``H0 + floor(phi / 3)``."""
    return base_depth + math.floor(check_phi(phi) / rules.head_depth_every + _EPS)


def scaled_resolution(
    phi: float, base_resolution: int = 512, rules: CompoundRules = PAPER_RULES
) -> int:
    """Input side ``R0 + 128 * phi`` rounded to a multiple of 128 (see :func:`_grow`)."""
    increment = rules.resolution_step * check_phi(phi)
    return _grow(base_resolution, increment, rules.resolution_divisor)


def ladder_of(backbone: str) -> tuple[str, ...] | None:
    """The known backbone ladder that contains ``backbone``, or None."""
    for ladder in BACKBONE_LADDERS.values():
        if backbone in ladder:
            return ladder
    return None


def resolve_ladder(ladder: str | Sequence[str]) -> tuple[str, ...]:
    """A ladder given by family name (a key of :data:`BACKBONE_LADDERS`) or as timm names."""
    if isinstance(ladder, str):
        if ladder not in BACKBONE_LADDERS:
            raise ValueError(
                f"backbone ladder {ladder!r} is not one of "
                f"{', '.join(map(repr, BACKBONE_LADDERS))} (or give a list of timm names)"
            )
        return BACKBONE_LADDERS[ladder]
    rungs = tuple(ladder)
    if not rungs:
        raise ValueError("a backbone ladder needs at least one backbone")
    return rungs


def scaled_backbone(
    phi: float,
    base_backbone: str,
    ladder: str | Sequence[str] | None = None,
    *,
    fixed: bool = False,
) -> str:
    """The backbone for ``phi``: ``floor(phi)`` rungs above the base on its ladder.

    Args:
        phi: the compound coefficient.
        base_backbone: the ``phi = 0`` backbone.
        ladder: rungs to climb; None uses the known ladder holding ``base_backbone`` (a
            backbone on no ladder is kept). When ``base_backbone`` is not on a given ladder,
            the ladder's first rung is the ``phi = 0`` point.
        fixed: keep ``base_backbone`` unless ``ladder`` is given (an explicit backbone).
    """
    phi = check_phi(phi)
    if ladder is None:
        rungs = None if fixed else ladder_of(base_backbone)
        if rungs is None:
            return base_backbone
    else:
        rungs = resolve_ladder(ladder)
        if fixed and base_backbone not in rungs:
            raise ValueError(f"backbone {base_backbone!r} is not on the ladder {list(rungs)}")
    start = rungs.index(base_backbone) if base_backbone in rungs else 0
    return rungs[min(start + math.floor(phi + _EPS), len(rungs) - 1)]


def _resolve_base(base: str | ModelConfig) -> ModelConfig:
    if isinstance(base, ModelConfig):
        return base
    return get_config(base)


def _check_neck(neck: str) -> None:
    if neck not in NECKS:
        raise ValueError(f"neck {neck!r} is not one of {', '.join(map(repr, sorted(NECKS)))}")


def _default_name(base: ModelConfig, phi: float, neck: str, backbone: str | None) -> str:
    stem = base.name[: -len("_d0")] if base.name.endswith("_d0") else base.name
    parts = [stem]
    if neck != base.neck:
        parts.append(neck)
    if backbone is not None:
        parts.append(backbone)
    parts.append(f"phi{phi:g}")
    return "_".join(parts)


def compound_config(
    phi: float,
    *,
    base: str | ModelConfig = DEFAULT_BASE,
    neck: str | None = None,
    backbone: str | None = None,
    backbone_ladder: str | Sequence[str] | None = None,
    num_classes: int = 90,
    rules: CompoundRules = PAPER_RULES,
    name: str | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The configuration the compound-scaling rules give for ``phi`` (module docstring).

    Args:
        phi: compound coefficient, any finite value >= 0.
        base: the ``phi = 0`` point, a registry name or a :class:`ModelConfig`; its width,
            neck depth, head depth, resolution and backbone are W0, D0, H0, R0 and the first
            rung. Everything else (levels, fusion, anchors, padding, ...) is kept.
        neck: any name in ``efficientdet.modeling.necks.NECKS``; None keeps the base's.
        backbone: a timm backbone with ``features_only`` support that replaces the base's and
            stays fixed at every phi, unless ``backbone_ladder`` is given too.
        backbone_ladder: rungs to climb with phi, a family name from
            :data:`BACKBONE_LADDERS` or a list of timm names.
        num_classes: classes C.
        rules: the scaling rules (:data:`PAPER_RULES`).
        name: configuration name; default derived from the base, e.g.
            ``tf_efficientdet_phi2.5``.
        overrides: any :class:`ModelConfig` field, applied after scaling (e.g. ``fusion``,
            ``image_size``).
    """
    phi = check_phi(phi)
    cfg = _resolve_base(base)
    neck_name = neck if neck is not None else cfg.neck
    _check_neck(neck_name)
    first_rung = backbone if backbone is not None else cfg.backbone
    height, width = cfg.image_size
    scaled = replace(
        cfg,
        name=name or _default_name(cfg, phi, neck_name, backbone),
        backbone=scaled_backbone(phi, first_rung, backbone_ladder, fixed=backbone is not None),
        neck=neck_name,
        num_classes=num_classes,
        fpn_channels=scaled_width(phi, cfg.fpn_channels, rules),
        fpn_repeats=scaled_depth(phi, cfg.fpn_repeats, rules),
        head_repeats=scaled_head_depth(phi, cfg.head_repeats, rules),
        image_size=(
            scaled_resolution(phi, height, rules),
            scaled_resolution(phi, width, rules),
        ),
    )
    if isinstance(overrides.get("anchors"), dict):
        overrides["anchors"] = AnchorConfig(**overrides["anchors"])
    return replace(scaled, **overrides) if overrides else scaled


def create_compound_model(
    phi: float, *, pretrained_backbone: bool = False, **kwargs: Any
) -> EfficientDet:
    """Build the network of :func:`compound_config` (``kwargs`` go there)."""
    return EfficientDet(compound_config(phi, **kwargs), pretrained_backbone=pretrained_backbone)


def config_for_training(
    name: str | None,
    phi: float | None,
    num_classes: int,
    *,
    model_config: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The model configuration a training run builds.

    With ``model_config`` (a :func:`~efficientdet.config.model_config_to_dict` mapping), that
    configuration, whatever its name says. Otherwise, with ``phi`` None, the registered model
    ``name``. With ``phi`` set, the compound-scaled
    configuration whose ``phi = 0`` base is ``name`` (default :data:`DEFAULT_BASE`), so a
    training config ``model: {phi: 2.5}`` scales D0 and ``{name: efficientdet_d0, phi: 2.5}``
    scales the PyTorch-native D0. ``overrides`` are :class:`ModelConfig` fields (``neck``,
    ``fusion``, ``image_size``, ...); ``None`` values are ignored.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if "image_size" in given:
        size = given["image_size"]
        given["image_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(size)
    if model_config is not None:
        if phi is not None:
            raise ValueError("a training run takes a model configuration or a phi, not both")
        return replace(model_config_from_dict(model_config), num_classes=num_classes, **given)
    if phi is None:
        if name is None:
            raise ValueError("a training run needs a model name or a phi")
        return get_config(name, num_classes=num_classes, **given)
    neck = given.pop("neck", None)
    backbone = given.pop("backbone", None)
    return compound_config(
        phi, base=name or DEFAULT_BASE, neck=neck, backbone=backbone,
        num_classes=num_classes, **given,
    )


def info_for_phi(
    phi: float, neck: str | None = None, *, base: str | ModelConfig = DEFAULT_BASE, **kwargs: Any
) -> dict[str, Any]:
    """What ``efficientdet info`` reports for a model, for the compound-scaled ``phi``
    (the keys of ``efficientdet info``'s rows, ``cli/info.py``); parameters and multiply-adds from the meta device."""
    return info_row(compound_config(phi, base=base, neck=neck, **kwargs))


# ---- the released table against the rules ----------------------------------------------------

# The phi each released row was scaled with.
RELEASED_PHI: dict[str, int] = {
    "d0": 0, "d1": 1, "d2": 2, "d3": 3, "d4": 4, "d5": 5, "d6": 6, "d7": 7, "d7x": 7,
}
COMPARED_FIELDS = (
    "backbone", "image_size", "fpn_channels", "fpn_repeats", "head_repeats",
    "fusion", "max_level", "anchor_scale",
)
_WIDTH = "the paper's Table 1 lists it; 64 * 1.35^phi rounds to the rule's value at multiples of 8 and no multiple-of-k rounding gives every released width (the official code lists them)"
_D6_UP = "the official configurations of D6, D7 and D7x use plain sum fusion"
_D7 = "D7 is D6's network (B6, W 384, D 8) at a 1536 input with anchor scale 5"
_D7X = "D7x is D7's neck and head with the B7 backbone and a sixth level, P8, at a 1536 input"
DEPARTURE_REASONS: dict[tuple[str, str], str] = {
    ("d2", "fpn_channels"): _WIDTH,
    ("d4", "fpn_channels"): _WIDTH,
    ("d5", "fpn_repeats"): "Table 1 keeps D5 at 7 BiFPN layers (the paper gives no reason)",
    ("d5", "image_size"): "Table 1 lists 1280 for D5",
    ("d6", "fpn_repeats"): "Table 1 stops BiFPN depth at 8 for D6-D7x",
    ("d6", "fusion"): _D6_UP,
    ("d7", "backbone"): _D7,
    ("d7", "image_size"): _D7,
    ("d7", "fpn_channels"): _D7,
    ("d7", "fpn_repeats"): _D7,
    ("d7", "fusion"): _D6_UP,
    ("d7", "anchor_scale"): _D7,
    ("d7x", "image_size"): _D7X,
    ("d7x", "fpn_channels"): _D7X,
    ("d7x", "fpn_repeats"): _D7X,
    ("d7x", "fusion"): _D6_UP,
    ("d7x", "max_level"): _D7X,
}


@dataclass(frozen=True)
class Departure:
    """One field where a released row differs from what the rules give for its phi."""

    model: str
    phi: int
    field: str
    rule: Any
    released: Any
    reason: str


def _field(config: ModelConfig, name: str) -> Any:
    if name == "anchor_scale":
        return config.anchors.anchor_scale
    if name == "backbone":
        return config.backbone
    return getattr(config, name)


def released_departures(
    family: str = "tf_efficientdet", rules: CompoundRules = PAPER_RULES
) -> list[Departure]:
    """Every field of the registered D0-D7x rows of ``family`` that differs from
    :func:`compound_config` of its phi scaled from the family's D0, with the documented
    reason (``"undocumented"`` for a departure this module does not explain)."""
    base = get_config(f"{family}_d0")
    found = []
    for key, phi in RELEASED_PHI.items():
        released = get_config(f"{family}_{key}")
        rule = compound_config(phi, base=base, rules=rules)
        for name in COMPARED_FIELDS:
            a, b = _field(rule, name), _field(released, name)
            if a != b:
                reason = DEPARTURE_REASONS.get((key, name), "undocumented")
                found.append(Departure(f"{family}_{key}", phi, name, a, b, reason))
    return found
