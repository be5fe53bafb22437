"""The process-wide CPU allocator setting (efficientdet.deploy.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Runs a step that allocates, touches and frees three 64 MB blocks until the heap settles,
# then prints the page faults of one more step.
PROBE = """
import resource
import torch
from efficientdet.deploy.runtime import tune_cpu_allocator
print(tune_cpu_allocator())
def step():
    a = torch.ones(16 * 2**20)
    b = a * 2
    del a
    return float((b + 1)[-1])
for _ in range(8):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="the setting is for glibc on Linux",
)


def run_probe(setting: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    env.pop("EFFICIENTDET_CPU_ALLOCATOR", None)
    if setting is not None:
        env["EFFICIENTDET_CPU_ALLOCATOR"] = setting
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )


@glibc_linux
def test_tuned_allocator_reuses_freed_large_blocks() -> None:
    tuned = run_probe(None)
    assert tuned.returncode == 0, tuned.stderr
    enabled, faults = tuned.stdout.split()
    assert enabled == "True"
    # 3 x 64 MB is 49,152 pages of 4 KiB: the system allocator maps and faults them anew.
    assert int(faults) < 2000
    system = run_probe("system")
    enabled, faults = system.stdout.split()
    assert enabled == "False" and int(faults) > 30000


def test_unknown_setting_is_an_error() -> None:
    result = run_probe("fast")
    assert result.returncode != 0
    assert "EFFICIENTDET_CPU_ALLOCATOR='fast'" in result.stderr


def test_cli_reports_a_bad_setting_clearly() -> None:
    env = dict(os.environ, EFFICIENTDET_CPU_ALLOCATOR="fast")
    result = subprocess.run(
        [sys.executable, "-m", "efficientdet.cli.main", "list"], env=env, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "expected 'tuned' or 'system'" in result.stderr
