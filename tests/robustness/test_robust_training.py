"""Never lose work: bad images mid-run, a killed run, a save that fails.

The kill test runs ``python -m efficientdet train`` in a real subprocess, kills it with
SIGKILL at a random step and resumes it with ``efficientdet train --resume``.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from efficientdet.modeling.checkpoint import atomic_write, read_checkpoint
from efficientdet.train import LAST_WEIGHTS, STATE_FILE, Trainer, load_config

SAVE_EVERY = 2
KILL_RUN_STEPS = 40


def _last_logged_step(run_dir: Path) -> int:
    """The highest step with a complete row in steps.csv (0 when none)."""
    path = run_dir / "steps.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if len(row) == 8 and row[0].isdigit()]
    return max((int(row[0]) for row in rows), default=0)


def _leftovers(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(".*.tmp"))


def test_training_goes_on_past_unreadable_images(
    cli, train_argv, robust_demo, tmp_path, caplog
) -> None:
    root = tmp_path / "data"
    shutil.copytree(robust_demo.root, root)
    train_doc = json.loads((root / "annotations_train.json").read_text())
    files = [root / entry["file_name"] for entry in train_doc["images"]]
    files[1].write_bytes(files[1].read_bytes()[:200])  # truncated
    files[4].write_bytes(b"")  # zero bytes
    files[7].write_text("not pixels at all")  # not an image
    shutil.copy(Path(__file__).parent / "conftest.py", files[9])  # a text file named .png
    broken_train = [files[1], files[4], files[7], files[9]]
    val_doc = json.loads((root / "annotations_val.json").read_text())
    broken_val = root / val_doc["images"][0]["file_name"]
    broken_val.write_bytes(broken_val.read_bytes()[:150])

    run = tmp_path / "run"
    steps = len(files) // 2  # batch 2: one epoch, every image is drawn once
    with caplog.at_level(logging.WARNING):
        status, stdout, stderr = cli(*train_argv(
            f"data.train={root / 'data.yaml'}", f"data.val={root / 'data.yaml'}",
            f"run.out_dir={run}", f"run.max_steps={steps}", f"run.save_every_steps={SAVE_EVERY}",
        ))
    assert status == 0, stderr
    assert f"finished: {steps}/{steps} steps" in stdout
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in broken_train:
        assert f"{path}: cannot read image" in warnings and "next readable image" in warnings, path
    assert "1 of 4 images could not be read and are left out of the metrics" in warnings
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 3
    assert str(broken_val) in metrics["unreadable_images"][0]
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["step"] == steps and state["nonfinite_total"] == 0


def _spawn_training(run_dir: Path, data_yaml: Path) -> subprocess.Popen:
    overrides = [
        "model.name=efficientdet_test", "model.pretrained_backbone=false",
        f"data.train={data_yaml}", f"run.out_dir={run_dir}", "run.batch_size=2",
        f"run.max_steps={KILL_RUN_STEPS}", f"run.save_every_steps={SAVE_EVERY}",
        "run.log_every=1", "run.eval_every=0", "run.progress=false", "data.num_workers=0",
        "optim.warmup_epochs=0",
    ]
    command = [sys.executable, "-m", "efficientdet", "train"]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_a_random_step_then_resume_loses_at_most_the_save_interval(
    cli, robust_demo, tmp_path
) -> None:
    rng = random.Random(os.environ.get("ROBUST_KILL_SEED", "7"))
    target = rng.randint(3, KILL_RUN_STEPS - 10)
    run = tmp_path / "run"
    process = _spawn_training(run, robust_demo.data_yaml)
    try:
        deadline = time.monotonic() + 240
        while _last_logged_step(run) < target:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "training did not reach the kill step"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()

    logged = _last_logged_step(run)
    assert logged < KILL_RUN_STEPS, "the run finished before the kill"
    # Every file a reader needs is whole: the state, the weights, the configuration.
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    saved = int(state["step"])
    assert saved % SAVE_EVERY == 0 and 0 <= logged - saved <= SAVE_EVERY, (saved, logged)
    weights = read_checkpoint(run / LAST_WEIGHTS)
    assert weights.metadata["step"] in (saved, saved - SAVE_EVERY)
    assert weights.config is not None and weights.config.name == "efficientdet_test"
    assert load_config(run / "config.yaml").run.save_every_steps == SAVE_EVERY
    # A kill inside a save leaves at most that save's temporary file; plant one to check that
    # resuming clears it.
    (run / f".{STATE_FILE}.killed.tmp").write_bytes(b"half a file")

    status, stdout, stderr = cli("train", "--resume", run)
    assert status == 0, stderr
    assert f"finished: {KILL_RUN_STEPS}/{KILL_RUN_STEPS} steps" in stdout
    assert not _leftovers(run)
    final = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    assert final["step"] == KILL_RUN_STEPS
    assert read_checkpoint(run / LAST_WEIGHTS).metadata["step"] == KILL_RUN_STEPS
    with open(run / "steps.csv", newline="") as f:
        logged_steps = [int(row["step"]) for row in csv.DictReader(f)]
    # Rows past the saved step were dropped on resume and written again: each step once.
    assert logged_steps == list(range(1, KILL_RUN_STEPS + 1))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_file(tmp_path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"previous checkpoint")

    def write_half_then_die(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    child = os.fork()
    if child == 0:  # the child is killed inside atomic_write, before the rename
        atomic_write(path, write_half_then_die)
        os._exit(0)
    _, wait_status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGKILL
    assert path.read_bytes() == b"previous checkpoint"
    assert len(_leftovers(tmp_path)) == 1  # the cut temporary file, never the real name


def _disk_full_after(real_write_bytes, marker: bytes = b"partial"):
    def write_bytes(self: Path, data) -> int:
        real_write_bytes(self, marker)  # some bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    return write_bytes


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    cli, train_overrides, robust_demo, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    config = load_config(None, train_overrides(
        f"data.train={robust_demo.data_yaml}", f"run.out_dir={run}", "run.max_steps=2",
        f"run.save_every_steps={SAVE_EVERY}",
    ))
    trainer = Trainer(config)
    trainer.fit()
    before = {name: (run / name).read_bytes() for name in (STATE_FILE, LAST_WEIGHTS)}

    monkeypatch.setattr(Path, "write_bytes", _disk_full_after(Path.write_bytes))
    with pytest.raises(OSError, match=rf"No space left on device: '.*{STATE_FILE}'") as info:
        trainer.save()
    assert info.value.errno == errno.ENOSPC
    for name, data in before.items():
        assert (run / name).read_bytes() == data, name
    assert not _leftovers(run)

    # The same through the command line: a clear message naming the file, exit status 2.
    status, _, stderr = cli("train", "--resume", run)
    assert status == 2
    assert "No space left on device" in stderr and STATE_FILE in stderr
    for name, data in before.items():
        assert (run / name).read_bytes() == data, name
    assert not _leftovers(run)
    monkeypatch.undo()
    assert torch.load(run / STATE_FILE, weights_only=True)["step"] == 2
    assert read_checkpoint(run / LAST_WEIGHTS).metadata["step"] == 2


def test_disk_full_while_writing_the_weights_keeps_the_previous_weights(
    robust_demo, tmp_path, monkeypatch
) -> None:
    import efficientdet as ed

    model = ed.create_model("efficientdet_test", num_classes=2)
    path = ed.save_checkpoint(model, tmp_path / LAST_WEIGHTS, metadata={"step": 1})
    previous = path.read_bytes()
    monkeypatch.setattr(Path, "write_bytes", _disk_full_after(Path.write_bytes))
    with pytest.raises(OSError, match=rf"No space left on device: '.*{LAST_WEIGHTS}'"):
        ed.save_checkpoint(model, path, metadata={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert read_checkpoint(path).metadata == {"step": 1}
    assert not _leftovers(tmp_path)
