"""Data-parallel training across processes (torchrun): one context owns the process group.

Nothing else in the package calls ``torch.distributed``. :class:`DistContext` holds the rank,
the world size and the device of this process, and every collective the trainer needs:
sums, a flag that is true on every rank when it is true on any, objects broadcast from rank 0
or gathered on rank 0. Tensors for collectives live on the context's device (CUDA under
NCCL, which refuses CPU tensors; CPU under gloo). A single process has the same interface,
with every collective the identity, so the trainer is written once.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)

# How long a collective may wait for the other ranks. Evaluation is sharded, so no rank waits
# for another's whole evaluation; the wait is bounded by the slowest shard and a checkpoint.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class DistContext:
    """This process's place in a data-parallel run, and the collectives between processes.

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: processes in the run (1: not distributed).
        local_rank: rank on this machine; the index of this process's GPU.
        device: where this process trains (``cuda:local_rank`` under NCCL).
        owns_group: this context created the process group and destroys it in :meth:`close`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    def __post_init__(self) -> None:
        if self.enabled and self.device.type == "cuda":
            # Object collectives under NCCL stage their bytes on the current device.
            torch.cuda.set_device(self.device)

    @classmethod
    def from_environment(cls, device: torch.device) -> DistContext:
        """Join the process group that torchrun describes in the environment (``WORLD_SIZE``,
        ``RANK``, ``LOCAL_RANK``); NCCL on CUDA, gloo on the CPU. Without those variables (or
        with ``WORLD_SIZE=1``) the process runs alone on ``device``.

        Raises:
            RuntimeError: CUDA was asked for and this process's GPU (``LOCAL_RANK``) is not
                visible.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            visible = torch.cuda.device_count()
            if local_rank >= visible:
                raise RuntimeError(
                    f"process {rank} (local rank {local_rank}) has no GPU: {visible} visible; "
                    "start at most one process per GPU (--nproc, torchrun --nproc-per-node)"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
            owns = True
        elif dist.get_backend() == "nccl" and device.type != "cuda":
            raise RuntimeError(
                f"the process group runs NCCL, which needs CUDA tensors, and run.device is {device}"
            )
        return cls(rank, world, local_rank, device, owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    # ---- collectives ---------------------------------------------------------------------

    def all_reduce_sum(self, value: Tensor) -> Tensor:
        """Sum of ``value`` over the ranks (``value`` itself alone); outside autograd. The
        tensor goes to this context's device for the reduction and comes back where it was."""
        if not self.enabled:
            return value
        reduced = value.detach().to(self.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(value.device)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks of a few numbers, in one reduction."""
        if not self.enabled:
            return list(values)
        reduced = self.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device))
        return [float(v) for v in reduced.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (a stop request, a skipped
        step): every rank then takes the same branch after the same step."""
        if not self.enabled:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank (picklable objects: a plan, a step count)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]  # type: ignore[return-value]

    def broadcast_tensors(self, tensors: list[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` (e.g. a module's parameters and buffers, on this context's
        device) in place with rank ``src``'s, in list order."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor, src=src)

    def gather(self, obj: T, dst: int = 0) -> list[T] | None:
        """Every rank's ``obj``, in rank order, on rank ``dst``; None on the others."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        """Destroy the process group if this context made it (after the run's last collective)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    # ---- data ----------------------------------------------------------------------------

    def shard(self, count: int) -> list[int]:
        """This rank's items of ``count``: every ``world_size``-th from ``rank``. The shards
        of all ranks cover ``0 .. count - 1`` once (sizes differ by at most one)."""
        return list(range(self.rank, count, self.world_size))

    def unshard(self, parts: list[list[T]]) -> list[T]:
        """The items of :meth:`shard`'s ``parts`` (one list per rank) back in index order."""
        count = sum(len(p) for p in parts)
        out: list[Any] = [None] * count
        for rank, part in enumerate(parts):
            out[rank :: self.world_size] = part
        return out


def convert_sync_batchnorm(module: M) -> M:
    """``module`` with every batch norm synchronised across processes, the fused BN +
    activation layers of timm's backbones included.

    torch's ``nn.SyncBatchNorm.convert_sync_batchnorm`` turns timm's ``BatchNormAct2d`` into a
    plain ``SyncBatchNorm`` that keeps the activation as a child and never calls it: the
    trained network would lack the backbone's activations. timm's converter makes
    ``SyncBatchNormAct`` of them (same normalisation, same activation) and plain
    ``SyncBatchNorm`` of the others (the BiFPN's and the heads' per-level norms). Parameters
    and running statistics are the same tensors as before; a module that is not itself a
    batch norm is converted in place and returned.
    """
    from timm.layers import convert_sync_batchnorm as timm_convert

    return cast(M, timm_convert(module))


def parse_nproc(argv: list[str]) -> tuple[int, list[str]]:
    """``--nproc N`` or ``--nproc=N`` taken out of ``argv``: ``(N, the rest)``; 0 when absent."""
    rest: list[str] = []
    nproc = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--nproc" and i + 1 < len(argv):
            nproc = int(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--nproc="):
            nproc = int(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return nproc, rest


def launch(nproc: int, argv: list[str], run: Callable[[list[str]], int] = subprocess.call) -> int:
    """Re-run ``efficientdet`` ``argv`` under ``torchrun --standalone --nproc_per_node nproc``.

    Returns:
        torchrun's exit status (0 when every process ended with 0).
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "efficientdet", *argv,
    ]
    return run(command)
