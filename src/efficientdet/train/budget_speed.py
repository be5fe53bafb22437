"""What the budget recipe times on this machine before it plans: the frozen backbone per
image, a training step of the neck and heads on cached maps, the whole network in
evaluation, reading and augmenting an image, and (only when a plan trains part of the
backbone) a training step with its last stages trainable."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import ModelConfig
from ..data import DetectionData, DetectionDataset, build_transform
from ..devices import time_calls
from ..modeling.backbone import run_frozen_part, run_trainable_part, tapped_blocks
from ..modeling.model import EfficientDet
from .feature_cache import inference_backbone
from .parameters import backbone_stages, first_trainable_block, freeze_modules

BATCH_SIZE = 8  # on a CPU: twice the updates of 16 for the same images a second
LOSS_SHARE = 1.25  # anchor matching, the focal loss and the EMA add about a quarter to the bare step


@dataclass(frozen=True)
class Speed:
    """Seconds this machine takes, measured by :func:`measure_speed`.

    Attributes:
        backbone_per_image: the frozen backbone (BN folded, as the cache runs it), one image.
        step: one training step of the neck and heads on cached maps at ``batch_size``.
        full_per_image: the whole network in evaluation, one image.
        read_per_image: reading, decoding and augmenting one image (the cache and the
            loader do it once per image they use; mosaic, mixup and copy-paste read more).
        unfrozen_step: one training step at ``batch_size`` with the last backbone stages
            trainable (:func:`measure_unfrozen_step`): from the cached output of the frozen
            ones where the plan caches them, from images where it cannot; None until a plan
            needs it.
    """

    backbone_per_image: float
    step: float
    full_per_image: float
    batch_size: int
    threads: int
    device: str
    read_per_image: float = 0.0
    unfrozen_step: float | None = None


@torch.no_grad()
def _time(fn: Any, device: torch.device, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn()`` on ``device``, after one warm-up."""
    return min(time_calls(fn, repeats=repeats, warmup=1, device=device))


def _toy_loss(model: EfficientDet, inputs: Any) -> torch.Tensor:
    """A loss that touches every output (the timing does not need the real one)."""
    classes, boxes = model.forward_features(inputs) if isinstance(inputs, list) else model(inputs)
    loss = sum(c.float().square().mean() for c in classes) + sum(b.float().square().mean() for b in boxes)
    assert isinstance(loss, torch.Tensor)
    return loss


def measure_speed(config: ModelConfig, *, batch_size: int = BATCH_SIZE, device: str = "cpu") -> Speed:
    """Time the network of ``config`` (random weights) on this machine: the cached-backbone
    forward per image, one training step of the rest at ``batch_size``, and the whole network
    per image in evaluation. Takes a few seconds."""
    dev = torch.device(device)
    model = EfficientDet(config, pretrained_backbone=False).to(dev)
    model.to(memory_format=torch.channels_last)
    h, w = config.image_size
    images = torch.randn(4, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
    backbone = inference_backbone(model.backbone, config.image_size).to(dev)
    per_image = _time(lambda: backbone(images), dev) / len(images)
    model.eval()
    full = _time(lambda: model(images), dev) / len(images)
    with torch.no_grad():
        maps = [m.repeat(math.ceil(batch_size / len(images)), 1, 1, 1)[:batch_size] for m in backbone(images)]
    model.train()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with torch.enable_grad():
            loss = _toy_loss(model, maps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step_time = LOSS_SHARE * _time(step, dev, repeats=2)
    return Speed(per_image, step_time, full, batch_size, torch.get_num_threads(), dev.type)


def measure_unfrozen_step(
    config: ModelConfig, trainable_stages: int, *, batch_size: int = BATCH_SIZE, device: str = "cpu",
    cached: bool = True,
) -> float:
    """Seconds of one training step of the network of ``config`` at ``batch_size`` with the
    backbone's last ``trainable_stages`` stages trainable and the others frozen (BN
    statistics fixed). ``cached``: as a run with the feature cache trains it, from the
    frozen blocks' cached output (the trainable blocks, neck and heads); otherwise from
    images, the whole network (a backbone that cannot be run in parts is timed so)."""
    dev = torch.device(device)
    model = EfficientDet(config, pretrained_backbone=False).to(dev)
    model.to(memory_format=torch.channels_last)
    stages = backbone_stages(model.backbone)
    count = max(0, len(stages) - trainable_stages)
    frozen = freeze_modules([m for s in stages[:count] for m in s])
    model.train()
    for module in frozen:
        module.eval()
    h, w = config.image_size
    images = torch.randn(batch_size, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    first = first_trainable_block(count)
    if cached and first >= 0 and tapped_blocks(model.backbone) is not None:
        with torch.no_grad():
            taps, boundary = run_frozen_part(model.backbone, images, first)

        def loss_of() -> torch.Tensor:
            return _toy_loss(model, [*taps, *run_trainable_part(model.backbone, boundary, first)])
    else:
        def loss_of() -> torch.Tensor:
            return _toy_loss(model, images)

    def step() -> None:
        with torch.enable_grad():
            loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return LOSS_SHARE * _time(step, dev, repeats=2)


def read_seconds(
    data: DetectionData, config: ModelConfig, count: int = 8, hsv: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> float:
    """Seconds to read, decode and augment one training image (as the feature cache does,
    with colour jitter ``hsv``), timed on up to ``count`` of them."""
    transform = build_transform(
        config.image_size, train=True, augment=True, mean=config.mean, std=config.std, hsv=hsv
    )
    dataset = DetectionDataset(data, transform, on_unreadable="substitute")
    items = min(count, len(dataset))
    if items == 0:
        return 0.0

    def read_all() -> None:
        for i in range(items):
            dataset[(i, 1)]

    return time_calls(read_all, repeats=1, warmup=0)[0] / items


def measure_with_reading(
    config: ModelConfig, train_data: DetectionData, device: str, hsv: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> Speed:
    """:func:`measure_speed` and :func:`read_seconds`: a cached view also reads, decodes and
    augments each image (with colour jitter ``hsv``) in the main process."""
    speed = measure_speed(config, device=device)
    return replace(speed, read_per_image=read_seconds(train_data, config, hsv=hsv))
