"""``efficientdet.cli.main``: one module per command, listed in workflow order, dispatched
with one error line and exit status 2 for expected failures."""

from __future__ import annotations

import argparse
import inspect
import pkgutil
from importlib import import_module

import pytest

import efficientdet.cli as cli_package
from efficientdet.cli.main import COMMANDS, build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The command names of ``parser`` in the order ``--help`` lists them."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [action.dest for action in sub._choices_actions]


def test_help_lists_the_command_modules_in_their_order() -> None:
    names = _subcommands(build_parser())
    assert names == [module.NAME for module in COMMANDS]
    assert len(set(names)) == len(names)


def test_help_follows_the_workflow() -> None:
    names = _subcommands(build_parser())
    position = {name: i for i, name in enumerate(names)}
    workflow = ["train", "eval", "predict", "export", "benchmark", "serve"]
    assert [position[n] for n in workflow] == sorted(position[n] for n in workflow)
    assert position["demo"] < position["train"]  # the first thing a newcomer runs
    last_workflow = position["serve"]
    data_tools = [position["check-data"], position["demo-data"]]
    assert min(data_tools) > last_workflow
    for name in ("ablate", "scaling-study", "info", "list", "create"):
        assert position[name] > max(data_tools), name


def test_every_command_module_is_listed() -> None:
    modules = [import_module(f"efficientdet.cli.{m.name}") for m in pkgutil.iter_modules(cli_package.__path__)]
    commands = {m.__name__ for m in modules if hasattr(m, "run") and hasattr(m, "add_arguments")}
    assert commands == {m.__name__ for m in COMMANDS}


@pytest.mark.parametrize("module", COMMANDS, ids=lambda m: m.NAME)
def test_command_modules_share_one_shape(module) -> None:
    assert isinstance(module.HELP, str) and module.HELP and "\n" not in module.HELP
    assert list(inspect.signature(module.add_arguments).parameters) == ["parser"]
    assert list(inspect.signature(module.run).parameters) == ["args"]
    parser = argparse.ArgumentParser()
    assert module.add_arguments(parser) is None


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_an_expected_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--minutes", "5"]) == 2
    err = capsys.readouterr().err
    assert err == "efficientdet train: error: --minutes plans a recipe for a dataset: give --data PATH\n"
