"""Timing helpers shared by the benchmarks: median of repeated runs after warm-up
(:mod:`efficientdet.devices`' timers, which synchronize CUDA around each call)."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from efficientdet.deploy.runtime import tune_cpu_allocator
from efficientdet.devices import time_calls, time_round_robin

_allocator = "system"


def setup(threads: int = 2) -> None:
    """Thread count, offline hub, and the allocator: the system's by default, the same for
    effdet and this project; ``EFFICIENTDET_CPU_ALLOCATOR=tuned`` gives both the setting the
    ``efficientdet`` command uses (:func:`efficientdet.tune_cpu_allocator`; it is
    process-wide, so effdet runs with it too)."""
    global _allocator
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    wanted = os.environ.get("EFFICIENTDET_CPU_ALLOCATOR", "system")
    _allocator = "tuned" if wanted != "system" and tune_cpu_allocator() else "system"


def median_ms(
    fn: Callable[[], object], repeats: int = 10, warmup: int = 3,
    device: torch.device | str | None = None,
) -> float:
    """Median wall time of ``fn()`` in milliseconds; ``device``: the one ``fn`` runs on,
    synchronized around each call (CUDA)."""
    return statistics.median(time_calls(fn, repeats=repeats, warmup=warmup, device=device)) * 1000


def interleaved_median_ms(
    fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 3,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Median times in milliseconds of several functions run in alternation, so machine noise
    hits all alike; ``device`` as in :func:`median_ms`."""
    times = time_round_robin(list(fns.values()), repeats=repeats, warmup=warmup, device=device)
    return {key: statistics.median(t) * 1000 for key, t in zip(fns, times, strict=True)}


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {_allocator} allocator"
    )


def write_coco_split(out: Path, split: str, images: list, annotations: list, categories: list) -> None:
    """``out/annotations_<split>.json`` of a generated split (the images are in ``out/<split>``)."""
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (out / f"annotations_{split}.json").write_text(json.dumps(doc))


def write_data_yaml(out: Path) -> Path:
    """``out/data.yaml`` naming the train and val splits of :func:`write_coco_split`."""
    path = out / "data.yaml"
    path.write_text(
        "format: coco\npath: .\n"
        "train: {annotations: annotations_train.json, images: train}\n"
        "val: {annotations: annotations_val.json, images: val}\n"
    )
    return path
