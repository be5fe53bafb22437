"""Multi-node training: two torchrun launchers (``--nnodes 2 --nproc-per-node 1``) meeting
through c10d rendezvous on 127.0.0.1, as two machines of a cluster would, with gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdet.train import STATE_FILE, load_config, train

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "model.name=efficientdet_test", "model.pretrained_backbone=false", "model.freeze_bn=true",
    "run.max_steps=3", "run.progress=false", "run.eval_every=0", "data.num_workers=0",
    "optim.ema_decay=0", "data.augment=true", "optim.lr=0.05",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # two launchers and a reference run: about 40-90 s on 2 CPU cores
def test_two_nodes_train_as_one_process_on_the_combined_batch(tiny_demo, tmp_path: Path) -> None:
    """Each node runs one process of batch 2; together they must end where one process of
    batch 4 ends (so both took part in every step), and only rank 0 writes the checkpoint."""
    single = load_config(None, [*COMMON, f"data.train={tiny_demo.data_yaml}",
                                f"run.out_dir={tmp_path / 'single'}", "run.batch_size=4"])
    train(single)

    port = _free_port()
    out = tmp_path / "two-nodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO / "src")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=efficientdet-test",
        "--max-restarts=0", "-m", "efficientdet", "train",
        *[arg for kv in COMMON for arg in ("--set", kv)],
        "--set", f"data.train={tiny_demo.data_yaml}", "--set", "run.batch_size=2",
        "--set", f"run.out_dir={out}",
    ]
    nodes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(2)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, log in zip(nodes, logs, strict=True):
        assert node.returncode == 0, log[-3000:]
    # The same files as the single process wrote, once: only rank 0 saves.
    assert (out / "last.safetensors").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
    a = torch.load(tmp_path / "single" / STATE_FILE, weights_only=True)["model"]
    b = torch.load(out / STATE_FILE, weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
