"""``efficientdet train``: ``--out``, ``--model``, ``--epochs``, ``--batch-size``, ``--device``
and ``--image-size`` are the ``--set`` keys they stand for."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import efficientdet.train as train_package
from efficientdet.cli.main import build_parser, main
from efficientdet.cli.train import SHORTHANDS, train_overrides
from efficientdet.train import budget_recipe, load_config


def _args(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *words])


def test_shorthands_give_the_config_of_their_set_keys() -> None:
    short = _args(
        "--out", "runs/mine", "--model", "tf_efficientdet_lite0", "--epochs", "12",
        "--batch-size", "16", "--device", "cpu", "--image-size", "384", "512",
    )
    spelt_out = _args(
        "--set", "run.out_dir=runs/mine", "--set", "model.name=tf_efficientdet_lite0",
        "--set", "run.epochs=12", "--set", "run.batch_size=16", "--set", "run.device=cpu",
        "--set", "model.image_size=[384, 512]",
    )
    config = load_config(None, train_overrides(short))
    assert config == load_config(None, train_overrides(spelt_out))
    assert (config.run.out_dir, config.model.name, config.run.epochs) == ("runs/mine", "tf_efficientdet_lite0", 12)
    assert (config.run.batch_size, config.run.device, config.model.image_size) == (16, "cpu", (384, 512))
    assert set(SHORTHANDS.values()) == {
        "run.out_dir", "model.name", "run.epochs", "run.batch_size", "run.device", "model.image_size"
    }


def test_one_image_side_is_a_square_as_with_set() -> None:
    assert load_config(None, train_overrides(_args("--image-size", "448"))) == load_config(
        None, ["model.image_size=448"]
    )


def test_values_stay_text_where_yaml_would_read_them_otherwise() -> None:
    config = load_config(None, train_overrides(_args("--out", "yes", "--model", "0123")))
    assert (config.run.out_dir, config.model.name) == ("yes", "0123")


def test_no_shorthand_leaves_the_config_and_set_alone() -> None:
    assert train_overrides(_args()) == []
    assert train_overrides(_args("--set", "optim.lr=0.01", "--epochs", "3")) == ["run.epochs=3", "optim.lr=0.01"]


def test_a_key_given_both_ways_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--epochs and --set run.epochs=\.\.\. both set run.epochs"):
        train_overrides(_args("--epochs", "3", "--set", "run.epochs=4"))
    with pytest.raises(ValueError, match="--out and --set run.out_dir"):
        train_overrides(_args("--set", "run.out_dir=a", "--out", "b"))


def test_resume_takes_shorthands_as_set_overrides_but_not_out() -> None:
    assert train_overrides(_args("--resume", "runs/x", "--epochs", "400")) == ["run.epochs=400"]
    with pytest.raises(ValueError, match="--resume continues the run in its own folder"):
        train_overrides(_args("--resume", "runs/x", "--out", "runs/y"))


def test_bad_shorthand_values_are_refused_by_the_parser() -> None:
    for words in (["--epochs", "0"], ["--batch-size", "-2"], ["--image-size", "0"]):
        with pytest.raises(SystemExit):
            _args(*words)


class _Recipe:
    def describe(self) -> str:
        return "recipe"


def _record_training(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace :func:`efficientdet.train.train` by one that records its config and finishes."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process, whatever runs the tests
    trained: list[Any] = []

    def fake_train(config: Any, **_: Any) -> SimpleNamespace:
        trained.append(config)
        return SimpleNamespace(status="finished", step=1, total_steps=1, seconds=6.0,
                               run_dir=config.run.out_dir, metrics=None)

    monkeypatch.setattr(train_package, "train", fake_train)
    return trained


def test_out_on_train_with_minutes_names_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The papercut: ``train --data my.yaml --minutes 10 --out runs/mine`` was refused."""
    planned: dict[str, Any] = {}

    def fake_budget_config(data: str, minutes: float, *, config_path: Any, overrides: list[str]) -> Any:
        planned.update(data=data, minutes=minutes, overrides=overrides)
        return load_config(None, overrides), _Recipe()

    monkeypatch.setattr(budget_recipe, "budget_config", fake_budget_config)
    trained = _record_training(monkeypatch)
    out = str(tmp_path / "mine")
    assert main(["train", "--data", "my.yaml", "--minutes", "10", "--out", out]) == 0
    assert (planned["data"], planned["minutes"]) == ("my.yaml", 10.0)
    assert load_config(None, planned["overrides"]).run.out_dir == out  # the planner keeps it
    assert trained[0].run.out_dir == out
    assert f"run folder {out}" in capsys.readouterr().out


def test_out_on_train_without_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = _record_training(monkeypatch)
    out = str(tmp_path / "mine")
    assert main(["train", "--data", "my.yaml", "--out", out, "--epochs", "2", "--device", "cpu"]) == 0
    (config,) = trained
    assert (config.run.out_dir, config.run.epochs, config.run.device) == (out, 2, "cpu")
    assert (config.data.train, config.data.val) == ("my.yaml", "my.yaml")


@pytest.mark.parametrize("name", ["on", "1.5", "null", "a: b.yaml", "[x].yaml"])
def test_data_paths_reach_the_config_as_text(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data`` is a path whatever YAML would read in it (a boolean, a number, a mapping)."""
    trained = _record_training(monkeypatch)
    assert main(["train", "--data", name, "--device", "cpu"]) == 0
    (config,) = trained
    assert (config.data.train, config.data.val) == (name, name)
