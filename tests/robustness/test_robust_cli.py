"""Command-line mistakes: every one is a one-line refusal (exit status 2) saying what is wrong,
never a traceback, and nothing is written for a command that does not run."""

from __future__ import annotations

import pytest

from efficientdet.train import load_config

# ---- unknown model names -------------------------------------------------------------------


def test_unknown_model_names_list_close_matches(cli, tiny_weights, image_corpus, robust_demo, tmp_path, train_argv) -> None:
    hint = "unknown model 'efficientdet_tset'; did you mean efficientdet_test"
    runs = {
        "info": ("info", "efficientdet_tset"),
        "predict": (
            "predict", "--weights", tiny_weights, "--model", "efficientdet_tset",
            image_corpus.folder / "rgb.jpg", "--out", tmp_path / "out",
        ),
        "train": tuple(train_argv(
            "model.name=efficientdet_tset", f"data.train={robust_demo.data_yaml}",
            f"run.out_dir={tmp_path / 'run'}",
        )),
    }
    for name, argv in runs.items():
        status, _, stderr = cli(*argv)
        assert status == 2, name
        assert stderr.startswith(f"efficientdet {name}: error: {hint}"), stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_name_far_from_every_model_still_says_where_to_look(cli) -> None:
    status, _, stderr = cli("info", "yolo")
    assert status == 2
    assert "unknown model 'yolo'" in stderr and "list_models()" in stderr


# ---- impossible image sizes ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", ""])
def test_impossible_image_size_options_are_refused_before_any_work(
    cli, tiny_weights, robust_demo, image_corpus, tmp_path, value
) -> None:
    out = tmp_path / "out"
    commands = {
        "predict": ("predict", "--weights", tiny_weights, image_corpus.folder / "rgb.jpg", "--out", out),
        "eval": ("eval", "--weights", tiny_weights, "--data", robust_demo.data_yaml),
        "check-data": ("check-data", "--data", robust_demo.data_yaml),
    }
    for name, argv in commands.items():
        status, _, stderr = cli(*argv, "--image-size", value)
        assert status == 2, name
        assert f"argument --image-size: expected a positive integer, got {value!r}" in stderr
    assert not out.exists()


def test_three_image_sides_are_refused(cli, tiny_weights, image_corpus, tmp_path) -> None:
    status, _, stderr = cli(
        "predict", "--weights", tiny_weights, image_corpus.folder / "rgb.jpg", "--out",
        tmp_path / "out", "--image-size", "64", "64", "64",
    )
    assert status == 2 and "--image-size takes H or H W, got 3 values" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-5", "abc", "12.5", "[0, 64]", "[64]", "[64, 64, 64]", "true"])
def test_impossible_training_image_sizes_are_refused(cli, train_argv, robust_demo, tmp_path, value) -> None:
    status, _, stderr = cli(*train_argv(
        f"model.image_size={value}", f"data.train={robust_demo.data_yaml}",
        f"run.out_dir={tmp_path / 'run'}",
    ))
    assert status == 2
    assert "model.image_size must be a positive integer or [height, width], got " in stderr
    assert not (tmp_path / "run").exists()


def test_training_image_size_forms_that_are_accepted() -> None:
    assert load_config(None, ["model.image_size=96"]).model.image_size == (96, 96)
    assert load_config(None, ["model.image_size=[64, 128]"]).model.image_size == (64, 128)
    assert load_config(None, ["model.image_size=null"]).model.image_size is None


# ---- missing files ---------------------------------------------------------------------------


def test_missing_files_are_named(cli, tiny_weights, robust_demo, image_corpus, train_argv, tmp_path) -> None:
    gone = tmp_path / "gone"
    image = image_corpus.folder / "rgb.jpg"
    runs = [
        (("predict", "--weights", gone / "w.safetensors", image, "--out", tmp_path / "o"),
         f"{gone / 'w.safetensors'}: no such checkpoint file"),
        (("predict", "--weights", tiny_weights, "--classes", gone / "names.txt", image, "--out", tmp_path / "o"),
         f"No such file or directory: '{gone / 'names.txt'}'"),
        (("eval", "--weights", tiny_weights, "--data", gone / "data.yaml"),
         f"{gone / 'data.yaml'}: no such file or folder"),
        (("train", "--config", gone / "train.yaml"), f"{gone / 'train.yaml'}: no such configuration file"),
        (tuple(train_argv(f"data.train={gone / 'a.json'}", f"run.out_dir={tmp_path / 'run'}")),
         f"{gone / 'a.json'}: no such file or folder"),
        (("train", "--resume", gone), f"{gone}: nothing to resume"),
        (tuple(train_argv(f"run.out_dir={tmp_path / 'run'}")), "no training data: set data.train"),
    ]
    for argv, message in runs:
        status, _, stderr = cli(*argv)
        assert status == 2, argv
        assert message in stderr, stderr
    status, stdout, _ = cli("check-data", "--data", gone / "data.yaml")
    assert status == 1 and f"{gone / 'data.yaml'}: no such file or folder" in stdout


def test_predict_goes_on_past_missing_sources(cli, tiny_weights, image_corpus, tmp_path) -> None:
    status, stdout, stderr = cli(
        "predict", "--weights", tiny_weights, tmp_path / "gone.jpg", tmp_path / "*.png",
        image_corpus.folder / "gray.png", "--out", tmp_path / "out", "--quiet",
    )
    assert status == 1
    assert "1 images" in stdout and "2 failures" in stdout
    assert f"failed: {tmp_path / 'gone.jpg'}: no such file" in stderr
    assert f"failed: {tmp_path / '*.png'}: no such file" in stderr


# ---- output folders that cannot be written -------------------------------------------------


def test_output_paths_that_are_files_are_refused(
    cli, tiny_weights, robust_demo, image_corpus, train_argv, tmp_path
) -> None:
    """As root nothing is read-only, so the output path is a file (mkdir must fail)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    image = image_corpus.folder / "rgb.jpg"
    runs = [
        (("predict", "--weights", tiny_weights, image, "--out", blocker, "--quiet"),
         f"{blocker}: the output folder exists and is not a folder"),
        (("predict", "--weights", tiny_weights, image, "--out", blocker / "sub", "--quiet"),
         f"Not a directory: '{blocker / 'sub'}'"),
        (tuple(train_argv(f"data.train={robust_demo.data_yaml}", f"run.out_dir={blocker}")),
         f"{blocker}: run.out_dir exists and is not a folder"),
        (tuple(train_argv(f"data.train={robust_demo.data_yaml}", f"run.out_dir={blocker / 'run'}")),
         f"Not a directory: '{blocker / 'run'}'"),
        (("eval", "--weights", tiny_weights, "--data", robust_demo.data_yaml, "--out", blocker),
         f"{blocker}: --out exists and is not a folder"),
    ]
    for argv, message in runs:
        status, _, stderr = cli(*argv)
        assert status == 2, argv
        assert stderr.startswith(f"efficientdet {argv[0]}: error: ") and message in stderr, stderr
    assert blocker.read_text() == "in the way"


def test_bad_option_values_are_refused(cli, tiny_weights, image_corpus, tmp_path, train_argv, robust_demo) -> None:
    image = image_corpus.folder / "rgb.jpg"
    runs = [
        (("predict", "--weights", tiny_weights, image, "--out", tmp_path / "o", "--batch-size", "0"),
         "batch_size must be at least 1"),
        (("predict", "--weights", tiny_weights, image, "--out", tmp_path / "o", "--nms", "fast"),
         "argument --nms: invalid choice: 'fast'"),
        (tuple(train_argv("optim.optimizer=adam")), "optim.optimizer='adam' is not one of"),
        (tuple(train_argv("run.batch_size=0")), "run.batch_size must be >= 1"),
        (tuple(train_argv("run.epochs_total=3")), "unknown key(s) ['run.epochs_total']"),
        (("train", "--set", "lr=1"), "must be section.key"),
    ]
    for argv, message in runs:
        status, _, stderr = cli(*argv)
        assert status == 2, argv
        assert message in stderr, stderr
