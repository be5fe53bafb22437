"""Repeated trainings of a study: records, reuse, and the statistics over seeds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from efficientdet import get_config
from efficientdet.studies.repeats import RESULT_FILE, Repeats, train_repeats


class _Result:
    def __init__(self, ap: float) -> None:
        self.metrics = {"AP": ap, "AP50": ap + 0.2}
        self.pretrained_backbone = True


def test_records_are_reused_only_for_the_same_steps_and_model(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def train_fn(config, steps, run_dir, *, seed):
        calls.append((steps, seed))
        return _Result(0.1 * (seed + 1))

    config = get_config("efficientdet_test")
    first = train_repeats(train_fn, config, 5, tmp_path, [0, 1, 2])
    assert calls == [(5, 0), (5, 1), (5, 2)] and first.reused == 0
    assert json.loads((tmp_path / "seed-2" / RESULT_FILE).read_text())["metrics"]["AP"] == pytest.approx(0.3)
    assert first.mean() == pytest.approx(0.2) and first.std() == pytest.approx(0.1)
    assert first.spread("AP50") == pytest.approx((0.3, 0.5)) and first.text() == "0.200 ± 0.100"

    calls.clear()
    assert train_repeats(train_fn, config, 5, tmp_path, [0, 1, 2]).reused == 3 and calls == []
    train_repeats(train_fn, config, 6, tmp_path, [0])  # other steps: trained again
    train_repeats(train_fn, replace(config, fpn_channels=24), 6, tmp_path, [0])  # other model
    assert calls == [(6, 0), (6, 0)]
    (tmp_path / "seed-1" / RESULT_FILE).write_text("{not json")  # a broken record: trained again
    train_repeats(train_fn, config, 5, tmp_path, [1])
    assert calls[-1] == (5, 1)


def test_records_remember_the_training_settings(tmp_path: Path, caplog) -> None:
    calls: list[int] = []

    def train_fn(config, steps, run_dir, *, seed):
        calls.append(seed)
        return _Result(0.2)

    config = get_config("efficientdet_test")
    lr1 = {"data": "a.yaml", "batch_size": 8, "overrides": ["optim.lr=0.01"]}
    train_repeats(train_fn, config, 5, tmp_path, [0], training=lr1)
    assert train_repeats(train_fn, config, 5, tmp_path, [0], training=dict(lr1)).reused == 1
    assert calls == [0]
    lr2 = {**lr1, "overrides": ["optim.lr=0.02"]}  # another learning rate: trained again
    assert train_repeats(train_fn, config, 5, tmp_path, [0], training=lr2).reused == 0
    assert calls == [0, 0]
    record = json.loads((tmp_path / "seed-0" / RESULT_FILE).read_text())
    assert record["signature"]["training"] == lr2

    # A record from before the settings were kept: reused, with a warning.
    train_repeats(train_fn, config, 5, tmp_path / "old", [0])
    with caplog.at_level("WARNING"):
        assert train_repeats(train_fn, config, 5, tmp_path / "old", [0], training=lr1).reused == 1
    assert "recorded without its training settings" in caplog.text
    # ... but only when its model and steps match.
    assert train_repeats(train_fn, config, 6, tmp_path / "old", [0], training=lr1).reused == 0


def test_statistics_of_one_run_and_of_missing_sizes() -> None:
    one = Repeats(runs=[{"AP": 0.4, "AP_small": -1.0}], seeds=[0])
    assert one.std() == 0.0 and one.text() == "0.400"
    assert one.values("AP_small") == [] and one.text("AP_small") == ""
