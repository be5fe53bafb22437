"""Backbone feature cache: train the neck and heads over a frozen backbone without running it
every step.

With the whole backbone frozen (``model.freeze_backbone=-1``, its BN statistics fixed) its
output for an image depends on the pixels alone, so it can be computed once and reused every
epoch. The backbone holds most of a detector's FLOPs (85 % of EfficientDet-Lite0's at 320 px),
so a step then costs the neck, heads and loss only. Augmentation is kept by caching ``views``
versions of each image: view 0 is the plain letterbox, views 1.. are draws of the training
augmentation with seeds fixed per view (mosaic, mixup and copy-paste included, drawn by the
same :class:`~efficientdet.data.DetectionDataset` as the on-the-fly loader's), and epoch ``e``
trains on view ``e % views``.

With the last blocks of the backbone training (``model.freeze_backbone=k``, ``k`` leading
stages frozen) the cache holds what the frozen blocks compute: the maps they produce and the
input of the first trainable block (``boundary``, stored apart only when it is not one of
those maps); each step runs the trainable blocks on it (``first_trainable``). Their share of
the backbone's work is small when they are the last, low-resolution ones.

The maps are stored as float16 on the CPU (``views * N`` images x the backbone's maps; for
Lite0 at 320 px about 282 KB an image); :func:`cache_bytes` gives the size in advance so a
run can refuse a cache that does not fit before computing it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import feature_sizes
from ..data import DetectionData, DetectionDataset, MixAugment, build_transform
from ..detection.detector import BackboneFeatures
from ..modeling.backbone import evaluation_mode, run_frozen_part, tapped_blocks
from ..modeling.optimize import fold_batchnorms

log = logging.getLogger(__name__)

CACHE_DTYPE = torch.float16
_VIEW_SEED = 7919  # view v's augmentation draws use epoch seed _VIEW_SEED * v + seed


@dataclass
class FeatureCache:
    """Cached backbone maps and the matching targets of ``views`` versions of every image.

    Attributes:
        maps: per backbone level, ``Tensor[views * N, C_l, H_l, W_l]`` float16; item
            ``view * N + index``.
        targets: ``views * N`` dicts ``{"boxes": Tensor[M, 4] xyxy input pixels,
            "labels": Tensor[M] int64}``, the same order.
        num_samples: ``N``, images in the training set.
        image_size: ``(H, W)`` of the network input.
        first_trainable: the index in ``backbone.blocks`` of the first block that trains
            (None: the whole backbone is frozen and ``maps`` are all its levels).
        boundary: ``Tensor[views * N, C, H_b, W_b]`` float16, that block's input, when it is
            not ``maps[-1]``.
    """

    maps: list[Tensor]
    targets: list[dict[str, Tensor]]
    num_samples: int
    image_size: tuple[int, int]
    first_trainable: int | None = None
    boundary: Tensor | None = None

    @property
    def views(self) -> int:
        return len(self.targets) // max(1, self.num_samples)

    def batch(
        self, indices: Sequence[int], epoch: int, device: torch.device
    ) -> tuple[BackboneFeatures, list[dict[str, Tensor]]]:
        """The batch of sample ``indices`` in the view of ``epoch``, as float32 on ``device``."""
        offset = (epoch % self.views) * self.num_samples
        rows = torch.tensor([offset + i for i in indices], dtype=torch.long)
        maps = [m.index_select(0, rows).to(device, torch.float32, non_blocking=True) for m in self.maps]
        targets = [
            {k: v.to(device) for k, v in self.targets[int(r)].items()} for r in rows
        ]
        if self.first_trainable is None:
            return BackboneFeatures(maps, self.image_size), targets
        boundary = (
            maps[-1] if self.boundary is None
            else self.boundary.index_select(0, rows).to(device, torch.float32, non_blocking=True)
        )
        return BackboneFeatures(maps, self.image_size, boundary, self.first_trainable), targets


def cache_bytes(
    channels: Sequence[int], strides: Sequence[int], image_size: tuple[int, int], items: int
) -> int:
    """Bytes of float16 maps for ``items`` images at ``image_size`` (levels ``strides``)."""
    max_level = max(strides).bit_length() - 1
    grids = feature_sizes(image_size, max_level)
    per_item = sum(c * grids[s.bit_length() - 1][0] * grids[s.bit_length() - 1][1]
                   for c, s in zip(channels, strides, strict=True))
    return per_item * items * torch.finfo(CACHE_DTYPE).bits // 8


@torch.inference_mode()
def frozen_part_bytes(
    backbone: nn.Module, image_size: tuple[int, int], first_trainable: int, items: int
) -> int:
    """Bytes of float16 maps for ``items`` images when the blocks of ``backbone`` from
    ``first_trainable`` on train: the levels the frozen blocks produce and, when it is not
    one of them, the trainable blocks' input (shapes from one small probe image)."""
    device = next(backbone.parameters()).device  # "meta" gives the shapes without computing
    with evaluation_mode(backbone):
        taps, boundary = run_frozen_part(backbone, torch.zeros(1, 3, *image_size, device=device), first_trainable)
    stored = taps + ([] if _boundary_is_tap(backbone, first_trainable) else [boundary])
    return sum(m.numel() for m in stored) * items * torch.finfo(CACHE_DTYPE).bits // 8


def _boundary_is_tap(backbone: nn.Module, first_trainable: int) -> bool:
    return first_trainable - 1 in (tapped_blocks(backbone) or ())


def inference_backbone(backbone: nn.Module, image_size: tuple[int, int]) -> nn.Module:
    """A copy of ``backbone`` for computing the cache: BN folded into the convolutions and
    channels-last memory (several times faster on CPU); the original is left as it is."""
    fast = copy.deepcopy(backbone).eval()
    fold_batchnorms(fast, probe_size=image_size)
    return fast.to(memory_format=torch.channels_last)


@torch.inference_mode()
def build_feature_cache(
    backbone: nn.Module,
    data: DetectionData,
    *,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    views: int = 1,
    hflip_prob: float = 0.5,
    scale_range: tuple[float, float] = (0.1, 2.0),
    hsv: tuple[float, float, float] = (0.0, 0.0, 0.0),
    mix: MixAugment | None = None,
    seed: int = 0,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    progress: bool = False,
    first_trainable: int | None = None,
) -> FeatureCache:
    """Run the frozen ``backbone`` over ``views`` versions of every training image.

    Args:
        backbone: returns the list of feature maps for ``Tensor[B, 3, H, W]``; used through
            :func:`inference_backbone` (a folded copy), so its outputs equal the training
            forward of a frozen backbone in evaluation mode up to float rounding.
        data: the training set.
        image_size: ``(H, W)`` network input.
        mean, std: input normalisation.
        views: versions per image; view 0 is the letterbox, views 1.. the training
            augmentation (``hflip_prob``, ``scale_range``, ``hsv`` colour jitter, and
            ``mix``: mosaic, mixup, copy-paste) with per-view seeds.
        seed: the run's seed; with it the views are a pure function of the data.
        batch_size: images per backbone call (small batches keep CPU caches warm).
        device: where the backbone runs; the cache itself is kept on the CPU.
        first_trainable: the index in ``backbone.blocks`` of the first block that trains
            (None: all frozen); the cache then holds what the blocks before it compute
            (:func:`~efficientdet.modeling.backbone.run_frozen_part`).

    Returns:
        A :class:`FeatureCache` of ``views * len(data)`` items.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    fast = inference_backbone(backbone, image_size).to(device)
    plain = build_transform(image_size, train=False, mean=mean, std=std)
    augmented = build_transform(
        image_size, train=True, augment=True, mean=mean, std=std, hflip_prob=hflip_prob,
        scale_range=scale_range, hsv=hsv,
    )
    count = len(data)
    store_boundary = first_trainable is not None and not _boundary_is_tap(backbone, first_trainable)

    def frozen_outputs(images: Tensor) -> list[Tensor]:
        if first_trainable is None:
            return list(fast(images))
        taps, boundary = run_frozen_part(fast, images, first_trainable)
        return [*taps, boundary] if store_boundary else taps

    maps: list[Tensor] = []
    targets: list[dict[str, Tensor]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=views * count, unit="img", desc="caching backbone features", dynamic_ncols=True)
    for view in range(views):
        dataset = (
            DetectionDataset(data, plain, on_unreadable="substitute") if view == 0
            else DetectionDataset(data, augmented, on_unreadable="substitute", mix=mix)
        )
        epoch_seed = _VIEW_SEED * view + seed
        for start in range(0, count, batch_size):
            items = [
                dataset[(i, epoch_seed)] if view else dataset[i]
                for i in range(start, min(start + batch_size, count))
            ]
            images = torch.stack([image for image, _ in items]).to(device)
            out = frozen_outputs(images.contiguous(memory_format=torch.channels_last))
            if not maps:
                maps = [torch.empty((views * count, *m.shape[1:]), dtype=CACHE_DTYPE) for m in out]
            row = view * count + start
            for store, m in zip(maps, out, strict=True):
                store[row : row + len(items)] = m.to("cpu", CACHE_DTYPE)
            targets += [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items]
            if bar is not None:
                bar.update(len(items))
    if bar is not None:
        bar.close()
    for level, m in enumerate(maps):
        if not bool(torch.isfinite(m).all()):
            raise ValueError(
                f"backbone level {level} overflows float16 in the feature cache; train without "
                "data.cache_features"
            )
    boundary = maps.pop() if store_boundary else None
    return FeatureCache(maps, targets, count, image_size, first_trainable, boundary)
