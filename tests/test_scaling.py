"""Compound scaling: the rules against the released table, fractional phi, any neck/backbone,
the ``create`` command and the training hook."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch

from efficientdet.cli import create as create_cli
from efficientdet.config import ModelConfig
from efficientdet.modeling import scaling
from efficientdet.modeling.profile import profile_config
from efficientdet.modeling.registry import get_config
from efficientdet.modeling.scaling import (
    BACKBONE_LADDERS,
    CompoundRules,
    compound_config,
    config_for_training,
    info_for_phi,
    released_departures,
    scaled_backbone,
    scaled_depth,
    scaled_head_depth,
    scaled_resolution,
    scaled_width,
)

TINY = "efficientdet_test"  # timm's test EfficientNet, W 16, D 1, head 1, 128 px

# The fields where the released rows differ from the rules, from the paper's Table 1 (and,
# for fusion, the official configurations): see the module docstring of efficientdet.modeling.scaling.
DOCUMENTED_DEPARTURES = {
    ("d2", "fpn_channels"): (120, 112),
    ("d4", "fpn_channels"): (216, 224),
    ("d5", "fpn_repeats"): (8, 7),
    ("d5", "image_size"): ((1152, 1152), (1280, 1280)),
    ("d6", "fpn_repeats"): (9, 8),
    ("d6", "fusion"): ("fast", "sum"),
    ("d7", "backbone"): ("b7", "b6"),
    ("d7", "image_size"): ((1408, 1408), (1536, 1536)),
    ("d7", "fpn_channels"): (520, 384),
    ("d7", "fpn_repeats"): (10, 8),
    ("d7", "fusion"): ("fast", "sum"),
    ("d7", "anchor_scale"): (4.0, 5.0),
    ("d7x", "image_size"): ((1408, 1408), (1536, 1536)),
    ("d7x", "fpn_channels"): (520, 384),
    ("d7x", "fpn_repeats"): (10, 8),
    ("d7x", "fusion"): ("fast", "sum"),
    ("d7x", "max_level"): (7, 8),
}


def _short(value: object) -> object:
    """``tf_efficientnet_b7`` -> ``b7``, so the table above reads like the paper's."""
    return value.rsplit("_", 1)[-1] if isinstance(value, str) and "efficientnet" in value else value


# ---- the rules against the released table --------------------------------------------------------

# The paper's Table 1 with the official configurations (arXiv 1911.09070; google/automl
# efficientdet/hparams_config.py), as in docs/REFERENCE.md section 1: input side, backbone
# rung, BiFPN width and depth, box/class head depth, top level, anchor scale, fusion.
PAPER_TABLE_1 = {
    "d0": (512, "b0", 64, 3, 3, 7, 4.0, "fast"),
    "d1": (640, "b1", 88, 4, 3, 7, 4.0, "fast"),
    "d2": (768, "b2", 112, 5, 3, 7, 4.0, "fast"),
    "d3": (896, "b3", 160, 6, 4, 7, 4.0, "fast"),
    "d4": (1024, "b4", 224, 7, 4, 7, 4.0, "fast"),
    "d5": (1280, "b5", 288, 7, 4, 7, 4.0, "fast"),
    "d6": (1280, "b6", 384, 8, 5, 7, 4.0, "sum"),
    "d7": (1536, "b6", 384, 8, 5, 7, 5.0, "sum"),
    "d7x": (1536, "b7", 384, 8, 5, 8, 4.0, "sum"),
}
TABLE_FIELDS = (
    "image_size", "backbone", "fpn_channels", "fpn_repeats", "head_repeats", "max_level",
    "anchor_scale", "fusion",
)


def _row(config: ModelConfig) -> dict[str, object]:
    """The Table 1 fields of ``config``, spelt as the paper's table above."""
    assert config.image_size[0] == config.image_size[1] and config.min_level == 3
    values = (
        config.image_size[0], _short(config.backbone), config.fpn_channels, config.fpn_repeats,
        config.head_repeats, config.max_level, config.anchors.anchor_scale, config.fusion,
    )
    return dict(zip(TABLE_FIELDS, values, strict=True))


@pytest.mark.parametrize("family", ["tf_efficientdet", "efficientdet"])
def test_released_rows_are_the_papers_table(family: str) -> None:
    for key, row in PAPER_TABLE_1.items():
        assert _row(get_config(f"{family}_{key}")) == dict(zip(TABLE_FIELDS, row, strict=True)), key


def test_rules_give_the_papers_rows_but_for_the_documented_departures() -> None:
    """phi = 0..7 under the rules is Table 1, except where the released models depart from
    the rules (each departure's rule value worked out by hand in DOCUMENTED_DEPARTURES)."""
    phis = {"d0": 0, "d1": 1, "d2": 2, "d3": 3, "d4": 4, "d5": 5, "d6": 6, "d7": 7, "d7x": 7}
    for key, phi in phis.items():
        expected = dict(zip(TABLE_FIELDS, PAPER_TABLE_1[key], strict=True))
        for (model, field), (rule, released) in DOCUMENTED_DEPARTURES.items():
            if model != key:
                continue
            if field == "image_size":
                rule, released = rule[0], released[0]
            assert expected[field] == released, (key, field)  # the two tables agree
            expected[field] = rule
        assert _row(compound_config(phi)) == expected, key


def _round_filters(x: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple, never more than 10 % below."""
    new = max(divisor, int(x + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * x else new


def test_no_multiple_of_k_rounding_gives_every_released_width() -> None:
    released = [get_config(f"tf_efficientdet_d{phi}").fpn_channels for phi in range(7)]
    assert released == [64, 88, 112, 160, 224, 288, 384]
    raw = [64 * 1.35**phi for phi in range(7)]
    candidates = {
        "nearest 8": lambda x: 8 * math.floor(x / 8 + 0.5),
        "round_filters": _round_filters,
        "down to 8": lambda x: 8 * math.floor(x / 8),
        "up to 8": lambda x: 8 * math.ceil(x / 8),
        "nearest 16": lambda x: 16 * math.floor(x / 16 + 0.5),
        "nearest 32": lambda x: 32 * math.floor(x / 32 + 0.5),
    }
    matches = {
        name: {phi for phi, x in enumerate(raw) if rule(x) == released[phi]}
        for name, rule in candidates.items()
    }
    assert matches["nearest 8"] == {0, 1, 3, 5, 6}
    assert matches["round_filters"] == {0, 1, 3, 5, 6}
    assert all(m != set(range(7)) for m in matches.values()), matches
    # The module's rule is the nearest multiple of 8: 64 * 1.35^phi = 64, 86.4, 116.6, 157.5,
    # 212.6, 287.0, 387.4, 523.0.
    assert [scaled_width(phi) for phi in range(8)] == [64, 88, 120, 160, 216, 288, 384, 520]


@pytest.mark.parametrize("family", ["tf_efficientdet", "efficientdet"])
def test_released_departures_are_exactly_the_documented_ones(family: str) -> None:
    found = released_departures(family)
    keys = {(d.model.removeprefix(f"{family}_"), d.field) for d in found}
    assert keys == set(DOCUMENTED_DEPARTURES)
    for d in found:
        key = (d.model.removeprefix(f"{family}_"), d.field)
        assert (_short(d.rule), _short(d.released)) == DOCUMENTED_DEPARTURES[key]
        assert d.reason != "undocumented"


def test_departures_against_effdet_table() -> None:
    """The same departures against the reference port's own configuration table."""
    model_config = pytest.importorskip("effdet.config.model_config")
    found = {}
    for key, phi in scaling.RELEASED_PHI.items():
        peer = model_config.get_efficientdet_config(f"tf_efficientdet_{key}")
        rule = compound_config(phi)
        pairs = {
            "backbone": (rule.backbone, peer.backbone_name),
            "image_size": (rule.image_size, tuple(peer.image_size)),
            "fpn_channels": (rule.fpn_channels, peer.fpn_channels),
            "fpn_repeats": (rule.fpn_repeats, peer.fpn_cell_repeats),
            "head_repeats": (rule.head_repeats, peer.box_class_repeats),
            "fusion": (rule.fusion, "sum" if peer.fpn_name == "bifpn_sum" else "fast"),
            "max_level": (rule.max_level, peer.max_level),
            "anchor_scale": (rule.anchors.anchor_scale, float(peer.anchor_scale)),
        }
        found.update({(key, f): (_short(a), _short(b)) for f, (a, b) in pairs.items() if a != b})
    assert found == DOCUMENTED_DEPARTURES


# ---- fractional phi, monotonicity, phi = 0 -----------------------------------------------------


def test_fractional_phi_rounds_to_the_nearest_values() -> None:
    c = compound_config(2.5)
    # 64 * 1.35^2.5 = 135.5 -> 136; 3 + 2.5 -> 6 (halves up); 512 + 320 = 832 -> 896 (halfway,
    # up); head 3 + floor(2.5 / 3) = 3; backbone the nearest smaller, B2.
    assert (c.fpn_channels, c.fpn_repeats, c.head_repeats) == (136, 6, 3)
    assert c.image_size == (896, 896) and c.backbone == "tf_efficientnet_b2"
    assert c.name == "tf_efficientdet_phi2.5"
    c = compound_config(0.4)
    assert (c.fpn_channels, c.fpn_repeats, c.image_size) == (72, 3, (512, 512))
    # Beyond phi = 7 the backbone stays at B7; the other dimensions keep growing.
    c = compound_config(8.3)
    assert c.backbone == "tf_efficientnet_b7" and c.fpn_repeats == 11 and c.head_repeats == 5
    assert c.fpn_channels > compound_config(7).fpn_channels


def test_float_noise_in_phi_does_not_change_rounding() -> None:
    phi = sum([0.1] * 30)  # 3.0000000000000004
    assert scaled_head_depth(phi) == scaled_head_depth(3) == 4
    assert scaled_head_depth(2.9999999999999996) == 4
    assert scaled_backbone(0.7 + 0.1 + 0.2, "tf_efficientnet_b0") == "tf_efficientnet_b1"


def test_configurations_are_monotone_in_phi() -> None:
    phis = [i * 0.05 for i in range(221)]  # 0 .. 11
    ladder = BACKBONE_LADDERS["tf_efficientnet"]
    rows = [
        (scaled_width(p), scaled_depth(p), scaled_head_depth(p), scaled_resolution(p),
         ladder.index(scaled_backbone(p, "tf_efficientnet_b0")))
        for p in phis
    ]
    for before, after in zip(rows, rows[1:], strict=False):
        assert all(a >= b for a, b in zip(after, before, strict=True)), (before, after)
    assert rows[-1] > rows[0]


def test_cost_is_monotone_in_phi() -> None:
    profiles = [profile_config(compound_config(p, base=TINY)) for p in (0, 0.5, 1, 1.5, 2)]
    for before, after in zip(profiles, profiles[1:], strict=False):
        assert after.multiply_adds >= before.multiply_adds
        assert after.params >= before.params
    assert profiles[-1].multiply_adds > profiles[0].multiply_adds


@pytest.mark.parametrize("base", ["tf_efficientdet_d0", "tf_efficientdet_lite0", "tf_efficientdet_lite3x", TINY])
def test_phi_zero_is_the_base(base: str) -> None:
    config = get_config(base)
    assert dataclasses.replace(compound_config(0, base=base), name=base) == config


def test_off_grid_base_grows_by_rounded_steps() -> None:
    # Lite0: 320 px (not a multiple of 128): the growth is rounded, 320 + 128 at phi = 1.
    c = compound_config(1, base="tf_efficientdet_lite0")
    assert c.image_size == (448, 448) and c.backbone == "tf_efficientnet_lite1"
    assert c.fusion == "sum" and c.act == "relu6"
    assert scaled_width(1, base_width=20) == 28  # 20 + (27 - 20 -> 8)


def test_fractional_phi_builds_and_runs() -> None:
    from efficientdet.modeling.model import EfficientDet

    config = compound_config(0.5, num_classes=3, image_size=(128, 128))
    assert (config.backbone, config.fpn_channels, config.fpn_repeats) == ("tf_efficientnet_b0", 72, 4)
    model = EfficientDet(config).eval()
    with torch.no_grad():
        classes, boxes = model(torch.randn(1, 3, 128, 128))
    sides = [128 // 2**level for level in config.levels]
    assert [tuple(t.shape) for t in classes] == [(1, 9 * 3, s, s) for s in sides]
    assert [tuple(t.shape) for t in boxes] == [(1, 9 * 4, s, s) for s in sides]
    assert all(torch.isfinite(t).all() for t in classes + boxes)


# ---- any neck, any backbone ------------------------------------------------------------------------


def test_every_neck_scales() -> None:
    from efficientdet.modeling.model import EfficientDet
    from efficientdet.modeling.necks import NECKS
    from efficientdet.modeling.profile import count_parameters

    for neck in sorted(NECKS):
        config = compound_config(1, base=TINY, neck=neck)
        assert (config.neck, config.fpn_channels, config.fpn_repeats) == (neck, 24, 2)
        with torch.device("meta"):
            base = count_parameters(EfficientDet(compound_config(0, base=TINY, neck=neck)))
            scaled = count_parameters(EfficientDet(config))
        assert scaled > base, neck
    # One neck other than BiFPN end to end: cost grows too.
    before, after = (profile_config(compound_config(p, base=TINY, neck="pafpn")) for p in (0, 1))
    assert after.multiply_adds > before.multiply_adds


def test_custom_backbone_is_kept_unless_a_ladder_is_given() -> None:
    kept = compound_config(3, base=TINY, backbone="resnet18")
    assert kept.backbone == "resnet18" and kept.fpn_channels == 40 and kept.fpn_repeats == 4
    assert kept.name == "efficientdet_test_resnet18_phi3"
    assert profile_config(kept, image_size=(128, 128)).params > 0  # its feature_info fits
    assert compound_config(3, base=TINY).backbone == "test_efficientnet"
    assert compound_config(2, base=TINY, backbone_ladder="efficientnet").backbone == "efficientnet_b2"
    climbed = compound_config(2, backbone="tf_efficientnet_b1", backbone_ladder="tf_efficientnet")
    assert climbed.backbone == "tf_efficientnet_b3"
    assert compound_config(1, backbone_ladder=["mobilenetv3_small_100", "resnet18"]).backbone == "resnet18"
    with pytest.raises(ValueError, match="not on the ladder"):
        compound_config(1, backbone="resnet18", backbone_ladder="efficientnet")
    with pytest.raises(ValueError, match="ladder"):
        compound_config(1, backbone_ladder="resnet")


def test_custom_base_config() -> None:
    base = dataclasses.replace(get_config(TINY), name="mine", fpn_channels=32, neck="fpn")
    c = compound_config(2, base=base, num_classes=5, fusion="sum")
    assert (c.name, c.neck, c.fpn_channels, c.fpn_repeats, c.image_size) == (
        "mine_phi2", "fpn", 56, 3, (384, 384)
    )
    assert (c.num_classes, c.fusion) == (5, "sum")
    rules = CompoundRules(width_factor=1.0, resolution_step=0)
    c = compound_config(2, base=base, rules=rules)
    assert (c.fpn_channels, c.image_size, c.fpn_repeats) == (32, (128, 128), 3)


@pytest.mark.parametrize("phi", [-1, float("nan"), float("inf")])
def test_bad_phi_raises(phi: float) -> None:
    with pytest.raises(ValueError, match="phi"):
        compound_config(phi)


def test_bad_neck_and_rules_raise() -> None:
    with pytest.raises(ValueError, match="neck 'nope'"):
        compound_config(1, neck="nope")
    with pytest.raises(ValueError, match="width_factor"):
        CompoundRules(width_factor=0.5)


# ---- hooks for the command line and training -----------------------------------------------------


def test_config_for_training() -> None:
    assert config_for_training("efficientdet_d1", None, 4) == get_config("efficientdet_d1", num_classes=4)
    c = config_for_training("tf_efficientdet_d0", 2.5, 4, image_size=256, neck=None, fusion=None)
    assert c == compound_config(2.5, num_classes=4, image_size=(256, 256))
    c = config_for_training(None, 1, 3, neck="fpn", fusion="sum")
    assert (c.neck, c.fusion, c.backbone, c.num_classes) == ("fpn", "sum", "tf_efficientnet_b1", 3)
    assert config_for_training("efficientdet_d0", 1, 3).backbone == "efficientnet_b1"
    with pytest.raises(ValueError, match="name or a phi"):
        config_for_training(None, None, 3)


def test_info_for_phi_reports_the_papers_d1_at_phi_1() -> None:
    info = info_for_phi(1)
    # Table 1 and 2: 640 px, W 88, D 4, head 3; 6.6M parameters, 6.10B multiply-adds.
    assert (info["image_size"], info["bifpn_width"], info["bifpn_depth"], info["head_depth"]) == (
        [640, 640], 88, 4, 3
    )
    assert info["backbone"] == "tf_efficientnet_b1" and info["levels"] == [3, 7]
    assert abs(info["params_m"] - 6.6) <= 0.066, info["params_m"]
    assert abs(info["gmacs"] - 6.10) <= 0.03 * 6.10, info["gmacs"]


def test_info_for_phi_passes_the_neck_and_base() -> None:
    info = info_for_phi(1.5, neck="fpn", base=TINY)
    # The tiny base (W 16, D 1, 128 px): 16 * 1.35^1.5 = 25.1 -> 24; 1 + 1.5 -> 3 (halves up);
    # 128 + 128 * 1.5 = 320 -> 384 (halfway, up).
    assert (info["bifpn_width"], info["bifpn_depth"], info["neck"]) == (24, 3, "fpn")
    assert info["image_size"] == [384, 384] and info["name"] == "efficientdet_test_fpn_phi1.5"


def test_create_writes_a_checkpoint_that_load_trained_rebuilds(tmp_path) -> None:
    from efficientdet.inference.loading import load_trained

    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\nbird\n")
    out = tmp_path / "model.safetensors"
    parser = argparse.ArgumentParser()
    create_cli.add_arguments(parser)
    args = parser.parse_args([
        "--phi", "1.5", "--base", TINY, "--neck", "pafpn", "--num-classes", "3",
        "--class-names", str(names), "--out", str(out),
    ])
    assert create_cli.run(args) == 0
    loaded = load_trained(out)
    expected = compound_config(1.5, base=TINY, neck="pafpn", num_classes=3)
    assert loaded.model.config == expected
    assert loaded.class_names == ["cat", "dog", "bird"]
    assert loaded.metadata["phi"] == 1.5 and loaded.metadata["base"] == TINY
    torch.manual_seed(0)
    fresh = scaling.create_compound_model(1.5, base=TINY, neck="pafpn", num_classes=3)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_create_rejects_mismatched_class_names(tmp_path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    parser = argparse.ArgumentParser()
    create_cli.add_arguments(parser)
    args = parser.parse_args([
        "--phi", "1", "--base", TINY, "--num-classes", "3", "--class-names", str(names),
        "--out", str(tmp_path / "m.safetensors"),
    ])
    with pytest.raises(ValueError, match="2 class names"):
        create_cli.run(args)
    assert not (tmp_path / "m.safetensors").exists()
