"""The scaling study: the FLOP-matching search, the depth cost model, and a tiny run that writes
its Markdown, CSV and PNG."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import yaml

from efficientdet.cli import scaling_study as scaling_study_cli
from efficientdet.modeling.profile import profile_config
from efficientdet.modeling.registry import get_config
from efficientdet.modeling.scaling import CompoundRules
from efficientdet.studies.scaling_study import (
    STUDY_FILES,
    Profiler,
    StudySettings,
    affine_depth_cost,
    baseline_config,
    match_dimension,
    match_knob,
    plan_study,
    run_study,
    single_dimension,
)

TINY = "efficientdet_test"
# Compound scaling without resolution growth keeps the tiny study's FLOPs (and so the depth
# the depth-only row needs) small.
NO_RESOLUTION = CompoundRules(resolution_step=0)


def _closest(cost, target: float, limit: int) -> int:
    return min(range(limit + 1), key=lambda k: (abs(math.log(max(cost(k), 1) / target)), k))


def _staircase(k: int) -> int:
    return 100 + 7 * k * k + (k // 3) * 50  # non-decreasing, with jumps


def test_match_knob_finds_the_closest_value() -> None:
    calls: list[int] = []

    def cost(k: int) -> int:
        calls.append(k)
        return _staircase(k)

    for target in [50, 100, 101, 500, 1234, 5000, 20000]:
        calls.clear()
        k = match_knob(cost, target)
        best = _closest(_staircase, target, 200)
        assert abs(math.log(_staircase(k) / target)) <= abs(math.log(_staircase(best) / target))
        assert len(calls) == len(set(calls)) < 20  # each k evaluated once, few evaluations


def test_match_knob_with_plateaus_and_unreachable_targets() -> None:
    assert match_knob(lambda k: 10, 10) == 0
    assert match_knob(lambda k: 10 * (k // 5), 30) == 15
    assert 10 * (match_knob(lambda k: 10 * (k // 5), 34) // 5) == 30  # on the closest plateau
    with pytest.raises(ValueError, match="stays below"):
        match_knob(lambda k: min(k, 10), 100, limit=64)


def test_single_dimension_steps() -> None:
    base = get_config(TINY)
    assert single_dimension(base, "width", 3).fpn_channels == 16 + 24
    deep = single_dimension(base, "depth", 7)
    assert (deep.fpn_repeats, deep.head_repeats) == (8, 3)
    assert single_dimension(base, "resolution", 2, resolution_step=16).image_size == (160, 160)
    with pytest.raises(ValueError, match="dimension"):
        single_dimension(base, "backbone", 1)


def test_affine_depth_cost_is_exact() -> None:
    base = get_config(TINY)
    predict = affine_depth_cost(base, Profiler(), CompoundRules())
    assert predict is not None
    for k in (7,):
        assert predict(k) == profile_config(single_dimension(base, "depth", k)).multiply_adds


def test_depth_match_uses_real_counts_when_the_model_is_not_affine() -> None:
    base = get_config(TINY)
    # A fake profiler whose cost is quadratic in depth: the affine check fails and the search
    # falls back to (fake) real counts, still finding the exact depth.
    real = Profiler()

    def quadratic(config):
        p = real(config)
        return type(p)(p.name, p.params, p.multiply_adds * config.fpn_repeats, p.image_size)

    profiler = Profiler(quadratic)
    assert affine_depth_cost(base, profiler, CompoundRules()) is None
    target = profiler(single_dimension(base, "depth", 5)).multiply_adds
    matched = match_dimension(base, "depth", target, profiler, rules=CompoundRules(), resolution_step=32)
    assert matched.fpn_repeats == 6


def test_image_scale_halves_the_baseline() -> None:
    settings = StudySettings(phis=(1.0,), base="tf_efficientdet_d0", image_scale=0.5, dimensions=())
    rows = plan_study(settings)
    assert rows[0].config.image_size == (256, 256)
    assert rows[1].config.image_size == (320, 320)  # 256 + 128 * 0.5
    assert rows[1].config.backbone == "tf_efficientnet_b1"


def test_tiny_study_matches_flops_and_writes_its_files(tmp_path) -> None:
    settings = StudySettings(
        phis=(1.0,), base=TINY, rules=NO_RESOLUTION, latency_repeats=1, latency_warmup=0,
        threads=1,
    )
    result = run_study(settings, tmp_path, command="efficientdet scaling-study ...", report=lambda _: None)
    rows = result.rows
    assert [r.method for r in rows] == ["baseline", "compound", "width", "depth", "resolution"]
    base, compound = rows[0].config, rows[1]
    assert base == baseline_config(settings)
    assert (compound.config.fpn_channels, compound.config.fpn_repeats) == (24, 2)
    for row in rows[2:]:
        assert row.target_multiply_adds == compound.multiply_adds
        changed = {
            "width": ("fpn_channels",), "depth": ("fpn_repeats", "head_repeats"),
            "resolution": ("image_size",),
        }[row.method]
        unchanged = ("fpn_channels", "fpn_repeats", "head_repeats", "image_size", "backbone")
        for name in unchanged:
            if name not in changed:
                assert getattr(row.config, name) == getattr(base, name), (row.method, name)
    # Width and depth have fine steps here: the matches are within a few per cent.
    assert abs(rows[2].flops_ratio - 1) < 0.05 and abs(rows[3].flops_ratio - 1) < 0.05
    # The chosen width is closer than its neighbours.
    width = rows[2].config.fpn_channels
    error = abs(math.log(rows[2].flops_ratio))
    for other in (width - 8, width + 8):
        macs = profile_config(single_dimension(base, "width", (other - 16) // 8)).multiply_adds
        assert error <= abs(math.log(macs / compound.multiply_adds))

    for name in STUDY_FILES:
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "scaling_study.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == [r.method for r in rows]
    assert all(float(r["latency_ms"]) > 0 for r in table)
    assert all(r["ap"] == "" for r in table)
    assert [float(r["gmacs"]) for r in table] == [round(r.multiply_adds / 1e9, 3) for r in rows]
    text = (tmp_path / "scaling_study.md").read_text()
    assert "| method |" in text and "efficientdet scaling-study ..." in text
    assert "CPU load average" in text
    assert (tmp_path / "scaling_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_the_study(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    scaling_study_cli.add_arguments(parser)
    args = parser.parse_args([
        "--phis", "1", "--base", TINY, "--dimensions", "resolution", "--image-scale", "0.25",
        "--resolution-step", "16", "--repeats", "0", "--out", str(tmp_path),
    ])
    assert scaling_study_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "| compound | 1.0 |" in out and "| resolution | 1.0 | R=64 |" in out and "wrote" in out
    assert all((tmp_path / name).is_file() for name in STUDY_FILES)


@pytest.mark.slow
def test_study_with_training_reports_ap(tmp_path, tiny_demo) -> None:
    settings = StudySettings(
        phis=(1.0,), base=TINY, rules=NO_RESOLUTION, dimensions=("width",), latency_repeats=0,
        train_steps=1, train_batch_size=2, data=str(tiny_demo.data_yaml), seeds=2,
    )
    result = run_study(settings, tmp_path, report=lambda _: None)
    assert [r.method for r in result.rows] == ["baseline", "compound", "width"]
    assert all(r.ap is not None and 0.0 <= r.ap <= 1.0 for r in result.rows)
    assert all(r.accuracy is not None and r.accuracy.seeds == [0, 1] for r in result.rows)
    assert all(r.config.num_classes == 10 for r in result.rows)  # the data's class count
    assert all(r.latency_ms is None for r in result.rows)
    # The shared short training, with the demo's recipe (efficientdet.studies.short_train).
    saved = yaml.safe_load(
        (tmp_path / "runs" / result.rows[2].config.name / "seed-1" / "config.yaml").read_text()
    )
    assert saved["optim"]["optimizer"] == "adamw" and saved["run"]["max_steps"] == 1
    assert saved["model"]["pretrained_backbone"] is False
    assert saved["run"]["seed"] == 1
    assert "the demo's recipe" in (tmp_path / "scaling_study.md").read_text()
    again = run_study(settings, tmp_path, report=lambda _: None)  # resumes: nothing trains again
    assert all(r.accuracy is not None and r.accuracy.reused == 2 for r in again.rows)


def test_cli_train_set_reaches_every_short_training(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    import efficientdet.studies.short_train as short_train_module
    from efficientdet.studies.short_train import ShortTrainResult

    calls: list[dict] = []

    def fake_short_train(config, steps, run_dir, **kwargs):
        calls.append({"name": config.name, "steps": steps, **kwargs})
        metrics = {"AP": 0.25, "AP50": 0.5}
        return ShortTrainResult(0.25, metrics, False, Path(run_dir), steps, 0.0)

    monkeypatch.setattr(short_train_module, "short_train", fake_short_train)
    data = tmp_path / "data.yaml"
    monkeypatch.setattr("efficientdet.data.load_dataset", lambda *_: argparse.Namespace(num_classes=3))
    parser = argparse.ArgumentParser()
    scaling_study_cli.add_arguments(parser)
    args = parser.parse_args([
        "--phis", "1", "--base", TINY, "--dimensions", "resolution", "--image-scale", "0.25",
        "--resolution-step", "16", "--repeats", "0", "--train-steps", "7", "--data", str(data),
        "--train-set", "optim.lr=0.015", "--train-set", "optim.ema_decay=0.99",
        "--out", str(tmp_path / "study"),
    ])
    assert scaling_study_cli.run(args) == 0
    assert len(calls) == 3  # baseline, compound, resolution
    assert all(c["overrides"] == ("optim.lr=0.015", "optim.ema_decay=0.99") for c in calls)
    assert all(c["steps"] == 7 and c["data"] == str(data) for c in calls)
    text = (tmp_path / "study" / "scaling_study.md").read_text()
    assert "`optim.lr=0.015`, `optim.ema_decay=0.99`" in text


def test_a_malformed_train_set_fails_before_any_work() -> None:
    with pytest.raises(ValueError, match="'bogus' must look like section.key=value"):
        StudySettings(train_overrides=("optim.lr=0.01", "bogus"))
