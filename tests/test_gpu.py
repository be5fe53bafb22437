"""Checks that need one CUDA GPU: CPU/CUDA parity, mixed-precision training, NCCL + SyncBN,
and the command line on CUDA. Every test here skips without CUDA, so the default run collects
and skips them; ``benchmarks/gpu_check.sh`` runs them on a GPU machine (``pytest -m gpu``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA for the duration of a test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _assert_outputs_close(
    got: tuple[list[torch.Tensor], list[torch.Tensor]],
    expected: tuple[list[torch.Tensor], list[torch.Tensor]],
    rel: float,
    what: str,
) -> None:
    """Each level's output within ``rel * (1 + max |expected|)`` of the expected one."""
    pairs = [("class", *p) for p in zip(got[0], expected[0], strict=True)]
    pairs += [("box", *p) for p in zip(got[1], expected[1], strict=True)]
    for i, (kind, a, b) in enumerate(pairs):
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        assert a.shape == b.shape, (what, kind, i, a.shape, b.shape)
        assert torch.isfinite(a).all(), (what, kind, i)
        scale = 1.0 + float(b.abs().max())
        diff = float((a - b).abs().max())
        assert diff <= rel * scale, f"{what}: {kind} output {i} differs by {diff:.3g} (scale {scale:.3g})"


@pytest.mark.timeout(120)
def test_d0_forward_matches_between_cpu_and_cuda(no_tf32) -> None:
    import efficientdet as ed

    torch.manual_seed(0)
    model = ed.create_model("tf_efficientdet_d0", pretrained_backbone=False).eval()
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x)
        model.cuda()
        got = model(x.cuda())
        got_nhwc = model(x.cuda().contiguous(memory_format=torch.channels_last))
    # cuDNN and oneDNN sum in different orders; fp32 through ~100 layers stays within 1e-4.
    _assert_outputs_close(got, expected, 1e-4, "CUDA NCHW vs CPU")
    _assert_outputs_close(got_nhwc, expected, 1e-4, "CUDA channels-last vs CPU")


def _train_overrides(data_yaml: Path, out: Path, *extra: str) -> list[str]:
    return [
        "model.name=tf_efficientdet_d0",
        "model.pretrained_backbone=false",
        "model.image_size=256",
        f"data.train={data_yaml}",
        f"run.out_dir={out}",
        "run.batch_size=4",
        "run.progress=false",
        "run.eval_every=0",
        "run.save_every_steps=0",
        "data.num_workers=0",
        "run.device=cuda",
        *extra,
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps_on_cuda(amp: str, tiny_demo, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from efficientdet.train import LAST_WEIGHTS, load_config, train

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    steps = 6
    config = load_config(None, _train_overrides(
        tiny_demo.data_yaml, tmp_path / "run", f"run.amp={amp}", "run.channels_last=true",
        f"run.max_steps={steps}",
    ))
    result = train(config)
    print(
        f"amp={amp}: losses {[round(v, 4) for v in result.losses]}, nonfinite_steps "
        f"{result.nonfinite_steps}, overflow_steps {result.overflow_steps}"
    )
    assert result.status == "finished" and result.step == steps
    assert len(result.losses) == steps and all(math.isfinite(v) for v in result.losses)
    assert result.nonfinite_steps == 0
    weights = load_file(str(tmp_path / "run" / LAST_WEIGHTS))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _targets(device: torch.device) -> list[dict[str, torch.Tensor]]:
    boxes = [[[8.0, 10.0, 60.0, 70.0], [40.0, 30.0, 120.0, 100.0]], [[20.0, 20.0, 90.0, 110.0]]]
    labels = [[1, 3], [7]]
    return [
        {"boxes": torch.tensor(b, device=device), "labels": torch.tensor(lab, device=device)}
        for b, lab in zip(boxes, labels, strict=True)
    ]


@pytest.mark.timeout(120)
def test_nccl_world_size_one_with_sync_batchnorm(no_tf32) -> None:
    import torch.distributed as dist
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    import efficientdet as ed
    from efficientdet.detection.detector import Detector
    from efficientdet.train.distributed import convert_sync_batchnorm

    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = ed.create_model("efficientdet_test", pretrained_backbone=False)
    with torch.no_grad():  # running statistics that change the eval-mode outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    acts = {n: type(m.act) for n, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    plain = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    assert acts and plain, "the test model should have both kinds of batch norm"

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        reference = copy.deepcopy(model).to(device)
        converted = convert_sync_batchnorm(copy.deepcopy(model)).to(device)
        modules = dict(converted.named_modules())
        for name, act in acts.items():  # every fused BN + activation kept its activation
            assert isinstance(modules[name], SyncBatchNormAct), name
            assert type(modules[name].act) is act, name
        assert sum(isinstance(m, SyncBatchNormAct) for m in converted.modules()) == len(acts)
        assert sum(type(m) is nn.SyncBatchNorm for m in converted.modules()) == plain
        assert not any(
            isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm)
            for m in converted.modules()
        )

        x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)).to(device)
        with torch.no_grad():
            _assert_outputs_close(converted.eval()(x), reference.eval()(x), 1e-5, "eval, converted")

        # A training step through DDP on NCCL (world size 1: the BN statistics are local).
        ddp = nn.parallel.DistributedDataParallel(Detector(converted).train(), device_ids=[0])
        ref_detector = Detector(reference).train()
        out = ddp(x, _targets(device))
        ref_out = ref_detector(x, _targets(device))
        out["loss"].backward()
        ref_out["loss"].backward()
        assert torch.isfinite(out["loss"]).item()
        torch.testing.assert_close(out["loss"], ref_out["loss"], rtol=1e-4, atol=1e-5)
        ref_params = dict(reference.named_parameters())
        for name, p in converted.named_parameters():
            assert p.grad is not None, name
            ref_grad = ref_params[name].grad
            assert ref_grad is not None, name
            scale = 1.0 + float(ref_grad.abs().max())
            assert float((p.grad - ref_grad).abs().max()) <= 1e-4 * scale, name
        # Same running statistics after the step: the eval outputs still agree.
        with torch.no_grad():
            _assert_outputs_close(converted.eval()(x), reference.eval()(x), 1e-4, "eval after a step")
    finally:
        dist.destroy_process_group()


def _cli(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "efficientdet", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(command[1:])}  -> {done.returncode}\n{done.stdout[-1500:]}")
    assert done.returncode == 0, f"{' '.join(command[2:4])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.timeout(300)
def test_cli_train_eval_predict_on_cuda(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    _cli("demo-data", "--out", data, "--num-train", "160", "--num-val", "16", "--image-size", "256")
    data_yaml = data / "data.yaml"
    sets = [
        "model.name=tf_efficientdet_d0", "model.pretrained_backbone=false", "model.image_size=256",
        f"data.train={data_yaml}", f"data.val={data_yaml}", "data.num_workers=2",
        f"run.out_dir={run}", "run.device=cuda", "run.amp=bf16", "run.channels_last=true",
        "run.max_steps=100", "run.batch_size=8", "run.eval_every=0", "run.save_every_steps=50",
        "run.progress=false",
    ]
    done = _cli("train", *[a for kv in sets for a in ("--set", kv)])
    assert "finished: 100/100 steps" in done.stdout
    for name in ("config.yaml", "steps.csv", "last.safetensors", "eval/metrics.json"):
        assert (run / name).is_file(), name

    weights = run / "last.safetensors"
    _cli("eval", "--weights", weights, "--data", data_yaml, "--split", "val", "--device", "cuda",
         "--batch-size", "8", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 16 and 0.0 <= metrics["metrics"]["AP"] <= 1.0

    _cli("predict", data / "val", "--weights", weights, "--out", tmp_path / "predict",
         "--device", "cuda", "--batch-size", "8", "--quiet", "--score-threshold", "0.05")
    assert (tmp_path / "predict" / "predictions.json").is_file()
    lines = (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) >= 16, f"{len(lines)} prediction records for 16 images"
