"""Timing helpers shared by the benchmarks: median of repeated runs after warm-up
(:mod:`efficientdet.devices`' timers, which synchronize CUDA around each call)."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def effdet_preprocess(config: Any) -> Callable[[Sequence[Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """effdet's evaluation input path for ``config`` (a ``ModelConfig``): its transform
    (``ResizePad`` + ``ImageToNumpy``) and its loader's normalisation, as ``images -> (x,
    img_info)``: ``x: Tensor[B, 3, H, W]`` and the ``img_scale`` / ``img_size`` that
    ``DetBenchPredict`` maps boxes back with."""
    from effdet.data.transforms import transforms_coco_eval

    transform = transforms_coco_eval(
        config.image_size[0], interpolation="bilinear", use_prefetcher=True,
        mean=config.mean, std=config.std,
    )
    mean = torch.tensor([m * 255 for m in config.mean]).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in config.std]).view(1, 3, 1, 1)

    def preprocess(images: Sequence[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        arrays, scales = [], []
        for image in images:
            array, info = transform(image, {})
            arrays.append(torch.from_numpy(array))
            scales.append(info["img_scale"])
        x = torch.stack(arrays).float().sub_(mean).div_(std)
        img_info = {
            "img_scale": torch.tensor(scales, dtype=torch.float32),
            "img_size": torch.tensor([[im.width, im.height] for im in images], dtype=torch.float32),
        }
        return x, img_info

    return preprocess


def to_effdet_state_dict(model: torch.nn.Module, effdet_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights (this project's layout) under the key names of ``effdet_model``, an
    effdet ``EfficientDet`` of the same architecture: the inverse of the renaming with which
    effdet checkpoints load here (:func:`~efficientdet.modeling.checkpoint.convert_effdet_state_dict`).

    Raises:
        KeyError / ValueError: a key of effdet's with no counterpart, or of another shape.
    """
    from efficientdet.modeling.checkpoint import convert_effdet_state_dict

    ours = model.state_dict()
    state = {}
    for key, value in effdet_model.state_dict().items():
        (name,) = convert_effdet_state_dict({key: value}, model)
        if ours[name].shape != value.shape:
            raise ValueError(f"{key} -> {name}: shape {tuple(ours[name].shape)}, effdet's {tuple(value.shape)}")
        state[key] = ours[name]
    return state
