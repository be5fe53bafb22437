"""``--device`` resolution and the timers (efficientdet.devices); no GPU needed: CUDA's
availability and ``torch.cuda.synchronize`` are monkeypatched."""

from __future__ import annotations

import time

import pytest
import torch

from efficientdet.devices import (
    parse_device,
    resolve_device,
    synchronize,
    time_calls,
    time_round_robin,
)


def pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_cuda_only_where_pytorch_sees_a_gpu(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 0)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    pretend_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")


def test_named_devices(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_cuda_without_a_gpu_says_so_in_one_line(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 0)
    for name in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="no CUDA GPU is visible to PyTorch") as caught:
            resolve_device(name)
        message = str(caught.value)
        assert "\n" not in message
        assert f"torch {torch.__version__}, built for " in message


def test_a_gpu_index_beyond_the_machines_is_refused(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"--device cuda:1: PyTorch sees 1 CUDA GPU \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "meta", ""])
def test_unknown_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"--device {name}: not one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_parse_device_does_not_ask_for_the_gpu(monkeypatch) -> None:
    pretend_gpus(monkeypatch, 0)
    assert parse_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="--device auto: not one of"):
        parse_device("auto")


def test_synchronize_waits_for_cuda_only(monkeypatch) -> None:
    waited: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    synchronize(None)
    synchronize("cpu")
    synchronize(torch.device("cpu"))
    assert waited == []
    synchronize("cuda:1")
    synchronize(torch.device("cuda"))
    assert waited == ["cuda:1", torch.device("cuda")]


class FakeMachine:
    """A clock that only ``call`` advances, by the next of ``durations`` seconds, and a log of
    clock reads, calls and synchronizations in the order they happen."""

    def __init__(self, durations: list[float]) -> None:
        self.durations = list(durations)
        self.now = 100.0
        self.log: list[str] = []

    def clock(self) -> float:
        self.log.append("clock")
        return self.now

    def call(self, name: str = "call") -> None:
        self.log.append(name)
        self.now += self.durations.pop(0)

    def synchronize(self, device: object) -> None:
        self.log.append(f"sync {device}")


def test_time_calls_synchronizes_before_each_clock_read(monkeypatch) -> None:
    machine = FakeMachine([0.25, 0.5])
    monkeypatch.setattr(torch.cuda, "synchronize", machine.synchronize)
    times = time_calls(machine.call, repeats=2, warmup=0, device="cuda:0", clock=machine.clock)
    assert times == [0.25, 0.5]
    assert machine.log == ["sync cuda:0", "clock", "call", "sync cuda:0", "clock"] * 2


def test_time_calls_leaves_out_the_warm_up(monkeypatch) -> None:
    machine = FakeMachine([4.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(torch.cuda, "synchronize", machine.synchronize)
    times = time_calls(machine.call, repeats=3, warmup=1, device="cuda", clock=machine.clock)
    assert times == [1.0, 2.0, 3.0]
    assert machine.log.count("sync cuda") == 2 * 4  # around every call, the warm-up's too
    assert machine.durations == []


def test_time_calls_on_the_cpu_does_not_synchronize(monkeypatch) -> None:
    machine = FakeMachine([0.5, 1.5, 2.5])
    monkeypatch.setattr(torch.cuda, "synchronize", machine.synchronize)
    assert time_calls(machine.call, repeats=2, device="cpu", clock=machine.clock) == [1.5, 2.5]
    assert "sync cpu" not in " ".join(machine.log)


def test_round_robin_alternates_and_times_each_function(monkeypatch) -> None:
    # Warm-up round a, b; then rounds (a: 1, b: 10), (a: 2, b: 20).
    machine = FakeMachine([7.0, 7.0, 1.0, 10.0, 2.0, 20.0])
    monkeypatch.setattr(torch.cuda, "synchronize", machine.synchronize)
    times = time_round_robin(
        [lambda: machine.call("a"), lambda: machine.call("b")],
        repeats=2, warmup=1, device="cuda", clock=machine.clock,
    )
    assert times == [[1.0, 2.0], [10.0, 20.0]]
    assert [e for e in machine.log if e in ("a", "b")] == ["a", "b"] * 3


def test_round_robin_turns_of_several_calls(monkeypatch) -> None:
    """Each turn: one untimed call, then the median of the timed ones; a pause before each
    turn (no warm-up round here)."""
    machine = FakeMachine([9.0, 1.0, 3.0, 2.0, 9.0, 10.0, 30.0, 20.0])
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    times = time_round_robin(
        [lambda: machine.call("a"), lambda: machine.call("b")],
        repeats=1, warmup=0, clock=machine.clock, calls_per_turn=4, pause_s=0.25,
    )
    assert times == [[2.0], [20.0]]
    assert [e for e in machine.log if e in ("a", "b")] == ["a"] * 4 + ["b"] * 4
    assert pauses == [0.25, 0.25] and machine.durations == []
    with pytest.raises(ValueError, match="calls_per_turn >= 1"):
        time_round_robin([lambda: None], repeats=1, calls_per_turn=0)


def test_time_calls_measures_real_time() -> None:
    times = time_calls(lambda: sum(range(10_000)), repeats=3)
    assert len(times) == 3 and all(t > 0 for t in times)


def test_timers_refuse_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_calls(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup >= 0"):
        time_round_robin([lambda: None], repeats=1, warmup=-1)
