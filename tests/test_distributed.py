"""Data-parallel training: the distributed context, SyncBN conversion, and 2-process gloo runs
on the CPU (torchrun): a stop signal sent to one process, resume, sharded evaluation, the
budget plan made once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from efficientdet.data import load_dataset
from efficientdet.detection.detector import Detector
from efficientdet.inference.evaluate import evaluate_detector
from efficientdet.inference.loading import load_trained
from efficientdet.modeling.model import EfficientDet
from efficientdet.modeling.optimize import optimize_for_inference
from efficientdet.modeling.registry import get_config
from efficientdet.train import STATE_FILE
from efficientdet.train.distributed import (
    DistContext,
    convert_sync_batchnorm,
    launch,
    parse_nproc,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=efficientdet_test", "model.pretrained_backbone=false", "model.freeze_bn=true",
    "run.progress=false", "data.num_workers=0", "run.batch_size=2", "optim.lr=0.05",
    "run.save_every_steps=0", "run.log_every=1",
]


# ---- the context on its own -------------------------------------------------------------------


def test_a_single_process_context_is_the_identity() -> None:
    ctx = DistContext()
    assert ctx.is_main and not ctx.enabled
    value = torch.tensor([1.5, 2.0])
    assert ctx.all_reduce_sum(value) is value
    assert ctx.sum([1.0, 2.0]) == [1.0, 2.0]
    assert ctx.any(True) and not ctx.any(False)
    assert ctx.broadcast({"a": 1}) == {"a": 1}
    assert ctx.gather("x") == ["x"]
    assert ctx.shard(3) == [0, 1, 2]


def test_shards_cover_every_item_once_and_unshard_restores_the_order() -> None:
    for world in (2, 3, 4):
        contexts = [DistContext(rank=r, world_size=world) for r in range(world)]
        shards = [c.shard(10) for c in contexts]
        assert sorted(i for s in shards for i in s) == list(range(10))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # What each rank computed for its items, gathered in rank order, back in item order.
        parts = [[f"item{i}" for i in s] for s in shards]
        assert contexts[0].unshard(parts) == [f"item{i}" for i in range(10)]
    assert DistContext(rank=1, world_size=3).shard(7) == [1, 4]


def test_nproc_is_taken_out_of_the_arguments_in_both_spellings() -> None:
    assert parse_nproc(["train", "--nproc", "2", "--data", "d"]) == (2, ["train", "--data", "d"])
    assert parse_nproc(["train", "--nproc=4", "--set", "a.b=1"]) == (4, ["train", "--set", "a.b=1"])
    assert parse_nproc(["train"]) == (0, ["train"])
    ran: list[list[str]] = []
    assert launch(2, ["train", "--data", "d"], run=lambda cmd: ran.append(cmd) or 0) == 0
    assert ran[0][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ran[0][-3:] == ["train", "--data", "d"]


# ---- SyncBN keeps the network -----------------------------------------------------------------


def _lite0() -> EfficientDet:
    torch.manual_seed(0)
    config = get_config("tf_efficientdet_lite0")
    from dataclasses import replace

    model = EfficientDet(replace(config, image_size=(128, 128)), pretrained_backbone=False)
    # Running statistics other than 0 / 1, so that normalisation changes the numbers.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        classes, boxes = model(x)
    return [*classes, *boxes]


def test_sync_batchnorm_conversion_keeps_every_activation_and_the_outputs() -> None:
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    model = _lite0()
    x = torch.randn(2, 3, 128, 128)
    before = _outputs(model, x)
    fused = sum(type(m) is BatchNormAct2d for m in model.modules())
    plain = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    assert (fused, plain) == (48, 60)  # the backbone's fused layers; the BiFPN and heads' norms

    converted = convert_sync_batchnorm(model).eval()
    assert sum(type(m) is SyncBatchNormAct for m in converted.modules()) == fused
    assert sum(type(m) is nn.SyncBatchNorm for m in converted.modules()) == plain
    assert not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in converted.modules())
    for a, b in zip(before, _outputs(converted, x), strict=True):
        torch.testing.assert_close(b, a)

    # What the check guards against: torch's own converter drops the fused activations.
    dropped = nn.SyncBatchNorm.convert_sync_batchnorm(_lite0()).eval()
    assert sum(type(m) is SyncBatchNormAct for m in dropped.modules()) == 0
    assert any(
        not torch.allclose(a, b, atol=1e-3) for a, b in zip(before, _outputs(dropped, x), strict=True)
    )


def test_a_converted_model_folds_for_evaluation_like_the_original() -> None:
    """The trainer evaluates (and caches features with) a BN-folded copy of the training
    weights; synced norms must fold as the plain ones do."""
    model = _lite0()
    x = torch.randn(1, 3, 128, 128)
    reference = _outputs(model, x)
    folded = optimize_for_inference(convert_sync_batchnorm(model), check=False, probe_size=(128, 128))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    for a, b in zip(reference, _outputs(folded, x), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


# ---- two processes on the CPU -----------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "efficientdet", *args]


def _sets(options: list[str]) -> list[str]:
    return [arg for kv in options for arg in ("--set", kv)]


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the worker processes under a torchrun launcher."""
    import psutil

    found: dict[int, int] = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if rank is not None and "efficientdet" in " ".join(child.cmdline()):
            found[int(rank)] = child.pid
    return found


def _logged_step(run_dir: Path) -> int:
    steps = run_dir / "steps.csv"
    if not steps.is_file():
        return 0
    lines = steps.read_text().strip().splitlines()
    return max(0, len(lines) - 1)


def test_sigterm_to_one_rank_stops_both_and_resume_ends_as_an_uninterrupted_run(
    tiny_demo, tmp_path: Path
) -> None:
    """SIGTERM reaches one of two processes mid-run: both stop after the same step (else the
    other would hang in the next step's all-reduce), one checkpoint is written, the job
    exits 0, and ``--resume`` ends on the weights of a run that was never stopped. The
    uninterrupted run's evaluation is sharded over both processes; it must give the metrics
    of one process evaluating the saved weights."""
    steps = 40
    options = [*TINY, f"data.train={tiny_demo.data_yaml}", f"data.val={tiny_demo.data_yaml}",
               f"run.max_steps={steps}", "run.eval_every=0", "optim.ema_decay=0"]
    stopped = tmp_path / "stopped"
    launcher = subprocess.Popen(
        _torchrun(["train", *_sets([*options, f"run.out_dir={stopped}"])]), env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _logged_step(stopped) < 5 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _workers(launcher)
        assert set(workers) == {0, 1}, "torchrun's workers not found"
        os.kill(workers[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it from rank 1
        log = launcher.communicate(timeout=240)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, log[-3000:]
    state = torch.load(stopped / STATE_FILE, weights_only=True)
    assert 5 <= state["step"] < steps, f"the run was not stopped mid-run (step {state['step']})"
    assert len(state["rng"]) == 2 and state["world_size"] == 2  # each process's own stream
    assert "interrupted" in log and f"resume with: efficientdet train --resume {stopped}" in log
    assert not (stopped / "eval").exists()  # stopped runs are not evaluated
    assert not list(stopped.glob(".*.tmp"))

    resumed = subprocess.run(_torchrun(["train", "--resume", str(stopped)]), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = tmp_path / "reference"
    done = subprocess.run(_torchrun(["train", *_sets([*options, f"run.out_dir={reference}"])]),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(reference / STATE_FILE, weights_only=True)
    b = torch.load(stopped / STATE_FILE, weights_only=True)
    assert a["step"] == b["step"] == steps
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)

    # The sharded evaluation against one process evaluating the same weights the same way.
    sharded = json.loads((reference / "eval" / "metrics.json").read_text())
    loaded = load_trained(reference / "last.safetensors")
    folded = optimize_for_inference(loaded.model, check=False, probe_size=loaded.model.config.image_size)
    detector = Detector(folded)
    config = detector.config
    single, _ = evaluate_detector(
        detector, load_dataset(tiny_demo.data_yaml, "val"), image_size=config.image_size,
        mean=config.mean, std=config.std, error_analysis=False,
    )
    assert sharded["num_images"] == single.num_images == 8
    assert sharded["num_detections"] == single.num_detections > 0
    for name, value in single.metrics.items():
        assert sharded["metrics"][name] == pytest.approx(value, abs=1e-4), name
    assert single.metrics["AP50"] > 0  # a metric that can differ


@pytest.mark.slow  # it spends its half-minute budget by design; about 35 s
def test_nproc_2_with_minutes_plans_once_and_ends_inside_the_budget(tiny_demo, tmp_path: Path) -> None:
    """``--nproc=2 --minutes N`` (the ``=`` spelling): rank 0 plans and times, both train on
    its plan, and the whole run (planning, caches, steps, evaluation) fits the budget."""
    minutes = 0.5
    out = tmp_path / "budget"
    command = [
        sys.executable, "-m", "efficientdet", "train", "--nproc=2", "--data", str(tiny_demo.data_yaml),
        "--minutes", str(minutes), *_sets([f"run.out_dir={out}", "run.progress=false",
                                            "data.num_workers=0", "run.batch_size=2"]),
    ]
    began = time.monotonic()
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=400)
    wall = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert log.count("budget recipe:") == 1, log[-3000:]  # one plan, printed by rank 0
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and state["step"] == state["total_steps"]
    # The budget counts from the plan's start; the launcher and two interpreters start first.
    assert state["elapsed"] < minutes * 60
    assert wall < minutes * 60 + 60, f"{wall:.0f} s for a {minutes}-minute budget"
    assert (out / "eval" / "metrics.json").is_file()
