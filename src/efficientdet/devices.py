"""Where the tensors run and how long calls take there: one reading of ``--device`` and one
timer for the whole package.

:func:`resolve_device` turns ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a ``torch.device``
and says in one line why CUDA cannot be had. :func:`time_calls` and :func:`time_round_robin`
wait for the device (:func:`synchronize`) before starting the clock and before reading it
after each call: CUDA runs kernels asynchronously, so a clock read without it measures how
long the launches took, not the work (as ``torch.utils.benchmark.Timer`` does).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "DEVICES", "parse_device", "resolve_device", "synchronize", "time_calls", "time_round_robin",
    "torch_build",
]

DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # what resolve_device accepts

Clock = Callable[[], float]


def torch_build() -> str:
    """``torch 2.5.1, built for CUDA 12.4`` (or ``built for CPU``): what error messages name."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__}, built for {f'CUDA {cuda}' if cuda else 'CPU'}"


def parse_device(name: str | torch.device) -> torch.device:
    """The ``torch.device`` of ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device`` of
    those types), without asking whether the machine has it; ``"auto"`` is
    :func:`resolve_device`'s.

    Raises:
        ValueError: for any other name, naming it and the choices.
    """
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: not one of {', '.join(DEVICES)}")
    return device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` of ``name``: ``"auto"`` (CUDA when PyTorch sees a GPU, else the
    CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, or a ``torch.device`` of those types.

    Raises:
        ValueError: for any other name, or CUDA asked for where PyTorch sees no GPU (or not
            GPU ``N``), in one line that says so.
    """
    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is visible to PyTorch ({torch_build()})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: PyTorch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                f"(cuda:0 to cuda:{count - 1})"
            )
    return device


def synchronize(device: torch.device | str | None) -> None:
    """Wait until ``device`` has finished its queued work: ``torch.cuda.synchronize`` on a
    CUDA device; nothing on the CPU (its calls return when the work is done) or for None."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> list[float]:
    """Seconds by ``clock`` of each of ``repeats`` calls of ``fn()``, after ``warmup`` calls
    that are not timed.

    ``device`` is the one ``fn`` runs on; it is synchronized before the clock starts and
    before it is read after each call. ``clock`` is wall time by default;
    ``time.thread_time`` gives this thread's CPU time instead.
    """
    return time_round_robin([fn], repeats=repeats, warmup=warmup, device=device, clock=clock)[0]


def time_round_robin(
    fns: Sequence[Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
    calls_per_turn: int = 1,
    pause_s: float = 0.0,
) -> list[list[float]]:
    """Seconds by ``clock`` of each of ``fns`` in ``repeats`` rounds, every function taking
    its turn once per round, after ``warmup`` untimed rounds: ``times[i][r]`` is ``fns[i]``'s
    time in round ``r``.

    Running them in alternation makes load from other processes on a shared machine fall on
    all of them alike. ``device`` and ``clock`` as in :func:`time_calls`.

    Args:
        calls_per_turn: consecutive calls of a function in its turn. Above 1, the first
            warms its caches again after the other functions ran and is not timed; the
            turn's time is the median of the others (steady state, as a function called
            over and over runs).
        pause_s: idle seconds before each turn, so that the worker threads of the function
            before (PyTorch's OpenMP, ONNX Runtime, OpenVINO and XNNPACK keep spinning for a
            while after a call) are asleep when this one starts.
    """
    if repeats < 1 or warmup < 0 or calls_per_turn < 1 or pause_s < 0:
        raise ValueError(
            f"repeats must be >= 1, warmup >= 0, calls_per_turn >= 1 and pause_s >= 0; got "
            f"{repeats}, {warmup}, {calls_per_turn} and {pause_s}"
        )
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, record in zip(fns, times, strict=True):
            if pause_s:
                time.sleep(pause_s)
            if calls_per_turn > 1:
                fn()
            turn = []
            for _ in range(max(1, calls_per_turn - 1)):
                synchronize(device)
                start = clock()
                fn()
                synchronize(device)
                turn.append(clock() - start)
            if round_ >= warmup:
                record.append(statistics.median(turn))
    return times
