"""Bad weights and training states through the commands: refused with the file named, and a
pickle carrying code is never executed (a marker file it would create must not appear).

tests/test_checkpoint.py checks ``read_checkpoint`` itself; here every bad file goes through
``predict --weights``, ``eval --weights``, ``train`` (``model.init_checkpoint``) and
``train --resume``.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import efficientdet as ed
from efficientdet.train import STATE_FILE, load_config, save_config


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the file appears if code ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickle_with_code(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"weight": _RunsCode(marker)}}, f, protocol=2)


def _torch_zip_with_code(path: Path, marker: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(2)}, "hook": _RunsCode(marker)}, path)


def _truncated(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header(path: Path, **metadata: str) -> None:
    save_file({"weight": torch.zeros(1)}, str(path), metadata={"format": "efficientdet", **metadata})


def _other_architecture(path: Path) -> None:
    """A plain state dict (no header) of a wider network than --model names."""
    model = ed.create_model("efficientdet_test", num_classes=10, fpn_channels=24)
    torch.save(model.state_dict(), path)


def _other_network(path: Path) -> None:
    """Weights of something else entirely, as safetensors without this project's header."""
    save_file({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, str(path))


# name -> (writer(path, marker, good weights), file name, what the message says: a regex)
Writer = Callable[[Path, Path, Path], None]
BAD_WEIGHTS: dict[str, tuple[Writer, str, str]] = {
    "pickle_with_code": (
        lambda p, m, g: _pickle_with_code(p, m), "evil.pth", "refused to load",
    ),
    # Not a safetensors file whatever its name; recent torch hands such names to safetensors,
    # which refuses the bytes, older torch unpickles with weights_only, which refuses the code.
    "pickle_with_code_named_safetensors": (
        lambda p, m, g: _pickle_with_code(p, m), "evil.safetensors",
        "(refused to load|not a readable checkpoint)",
    ),
    "torch_zip_with_code": (
        lambda p, m, g: _torch_zip_with_code(p, m), "evil.pt", "refused to load",
    ),
    "truncated_safetensors": (
        lambda p, m, g: _truncated(p, g), "cut.safetensors", "truncated or corrupt",
    ),
    "truncated_torch_zip": (
        lambda p, m, g: (torch.save({"w": torch.zeros(999)}, p), _truncated(p, p)),
        "cut.pth", "truncated or corrupt",
    ),
    "empty_file": (lambda p, m, g: p.write_bytes(b""), "empty.safetensors", "the file is empty"),
    "text_file": (
        lambda p, m, g: p.write_text("weights? no.\n" * 10), "notes.safetensors",
        "not a readable checkpoint",
    ),
    "newer_format": (
        lambda p, m, g: _header(p, format_version="99"), "future.safetensors",
        r"written by a newer efficientdet \(checkpoint format 99",
    ),
    "format_version_not_a_number": (
        lambda p, m, g: _header(p, format_version="two"), "odd.safetensors",
        "format version in the header is not a number",
    ),
    "config_not_json": (
        lambda p, m, g: _header(p, format_version="1", config="{name: tiny"), "badcfg.safetensors",
        "the stored model configuration is invalid",
    ),
    "config_with_unknown_fields": (
        lambda p, m, g: _header(p, format_version="1", config=json.dumps({"name": "x", "layers": 3})),
        "unknown.safetensors", r"model configuration has unknown fields \['layers'\]",
    ),
    "metadata_not_json": (
        lambda p, m, g: _header(p, format_version="1", metadata="[1, 2"), "meta.safetensors",
        "the stored metadata is not valid JSON",
    ),
    "no_architecture_recorded": (
        lambda p, m, g: _other_network(p), "other.safetensors", "does not record its architecture",
    ),
}


def _write_bad(case: str, folder: Path, good: Path) -> tuple[Path, Path, str]:
    write, name, problem = BAD_WEIGHTS[case]
    folder.mkdir(parents=True, exist_ok=True)
    path, marker = folder / name, folder / "CODE_RAN"
    write(path, marker, good)
    return path, marker, problem


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_predict_and_eval_refuse_bad_weights(
    cli, tiny_weights, robust_demo, image_corpus, tmp_path, case
) -> None:
    path, marker, problem = _write_bad(case, tmp_path / "w", tiny_weights)
    out = tmp_path / "out"
    commands = {
        "predict": ("predict", "--weights", path, image_corpus.folder / "rgb.jpg", "--out", out, "--quiet"),
        "eval": ("eval", "--weights", path, "--data", robust_demo.data_yaml, "--device", "cpu"),
    }
    for name, argv in commands.items():
        status, stdout, stderr = cli(*argv)
        assert status == 2, (name, stdout, stderr)
        assert stderr.startswith(f"efficientdet {name}: error: {path}"), stderr
        assert re.search(problem, stderr), stderr
    assert not marker.exists(), "unpickling ran code"
    assert not out.exists(), "nothing is written when the weights are refused"


def test_wrong_architecture_names_the_keys(cli, image_corpus, tmp_path) -> None:
    path = tmp_path / "wide.pth"
    _other_architecture(path)
    status, _, stderr = cli(
        "predict", "--weights", path, "--model", "efficientdet_test",
        image_corpus.folder / "rgb.jpg", "--out", tmp_path / "out", "--quiet",
    )
    assert status == 2
    assert f"{path} does not fit the model 'efficientdet_test'" in stderr
    assert "mis-shaped keys (file vs model)" in stderr and "(24, 64, 1, 1) vs (16, 64, 1, 1)" in stderr


def test_other_network_with_a_model_name_is_refused(cli, image_corpus, tmp_path) -> None:
    path = tmp_path / "resnet.safetensors"
    _other_network(path)
    status, _, stderr = cli(
        "predict", "--weights", path, "--model", "efficientdet_test",
        image_corpus.folder / "rgb.jpg", "--out", tmp_path / "out", "--quiet",
    )
    assert status == 2
    assert "missing keys" in stderr and re.search(r"2 unexpected keys: fc\.\w+, fc\.\w+", stderr)


def test_header_metadata_of_the_wrong_shape_is_refused(cli, image_corpus, tmp_path) -> None:
    model = ed.create_model("efficientdet_test", num_classes=2)
    cases = {
        "names.safetensors": ({"class_names": "cat,dog"}, "'class_names' in the header must be a list of str"),
        "ids.safetensors": ({"label_to_category_id": [1, "2"]}, "'label_to_category_id' in the header must be a list of int"),
        "list.safetensors": (None, "the stored metadata must be a JSON object"),
    }
    for name, (metadata, problem) in cases.items():
        path = ed.save_checkpoint(model, tmp_path / name, metadata=metadata)
        if metadata is None:  # rewrite the header's metadata as a JSON list
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                header = dict(f.metadata())
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            save_file(tensors, str(path), metadata={**header, "metadata": "[1, 2]"})
        status, _, stderr = cli(
            "predict", "--weights", path, image_corpus.folder / "rgb.jpg", "--out",
            tmp_path / "out", "--quiet",
        )
        assert status == 2 and f"{path}: {problem}" in stderr, stderr


def test_weights_file_missing_or_a_folder(cli, image_corpus, tmp_path) -> None:
    for path in (tmp_path / "missing.safetensors", tmp_path):
        status, _, stderr = cli(
            "predict", "--weights", path, image_corpus.folder / "rgb.jpg", "--out",
            tmp_path / "out", "--quiet",
        )
        assert status == 2 and f"{path}: no such checkpoint file" in stderr


def test_training_refuses_an_init_checkpoint_with_code(
    cli, train_argv, robust_demo, tmp_path
) -> None:
    path, marker, _ = _write_bad("pickle_with_code", tmp_path / "w", tmp_path)
    status, _, stderr = cli(*train_argv(
        f"data.train={robust_demo.data_yaml}", f"run.out_dir={tmp_path / 'run'}",
        f"model.init_checkpoint={path}",
    ))
    assert status == 2 and f"{path}: refused to load" in stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / STATE_FILE).exists()


def _run_folder(tmp_path: Path, data_yaml: Path, train_overrides: Callable[..., list[str]]) -> Path:
    """A run folder with a valid configuration and no training state yet."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, train_overrides(f"data.train={data_yaml}", f"run.out_dir={run}"))
    save_config(config, run / "config.yaml")
    return run


def test_resume_refuses_a_bad_training_state(
    cli, train_overrides, robust_demo, tmp_path
) -> None:
    run = _run_folder(tmp_path, robust_demo.data_yaml, train_overrides)
    marker = tmp_path / "CODE_RAN"
    torch.save({"version": 1, "step": 4}, run / STATE_FILE)
    good = (run / STATE_FILE).read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "unreadable training state"),
        "empty": (b"", "unreadable training state"),
        "text": (b"step: 4\n", "unreadable training state"),
    }
    for name, (data, problem) in cases.items():
        (run / STATE_FILE).write_bytes(data)
        status, _, stderr = cli("train", "--resume", run)
        assert status == 2 and f"{run / STATE_FILE}: {problem}" in stderr, (name, stderr)

    _pickle_with_code(run / STATE_FILE, marker)
    status, _, stderr = cli("train", "--resume", run)
    assert status == 2 and "unreadable training state" in stderr and "weights_only" in stderr.lower()
    assert not marker.exists(), "unpickling the training state ran code"

    torch.save({"version": 99, "step": 4}, run / STATE_FILE)
    status, _, stderr = cli("train", "--resume", run)
    assert status == 2 and "written by a newer efficientdet; upgrade to resume" in stderr


def test_resume_without_state_or_configuration(
    cli, train_overrides, robust_demo, tmp_path
) -> None:
    run = _run_folder(tmp_path, robust_demo.data_yaml, train_overrides)
    status, _, stderr = cli("train", "--resume", run)
    assert status == 2 and f"{run}: nothing to resume (no {STATE_FILE}" in stderr
    torch.save({"version": 1}, run / STATE_FILE)
    shutil.move(run / "config.yaml", run / "moved.yaml")
    status, _, stderr = cli("train", "--resume", run)
    assert status == 2 and f"{run / 'config.yaml'}: no such configuration file" in stderr
