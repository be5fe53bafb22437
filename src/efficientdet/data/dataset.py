"""Torch ``Dataset`` over detection samples, the batch collate function and a DataLoader builder.

Augmentation randomness is reproducible whatever the number of workers: the loader built by
:func:`build_dataloader` uses :class:`SeededSampler`, which hands each index together with
a seed drawn once per epoch, and the dataset seeds a private generator for that item from
``(epoch seed, index)``. Plain integer indexing uses the global torch RNG.

An image that cannot be read (deleted, truncated, corrupt, not an image, above the
decompression-bomb limit) is handled by the dataset's ``on_unreadable`` policy: raise, or
go on with the next readable sample (training), or a blank image flagged in the target
(evaluation, which then leaves that image out of the metrics).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from ..devices import resolve_device
from .mix import MixAugment
from .mosaic import LabelledImage
from .sample import DataError, DetectionData, DetectionSample
from .transforms import TrainTransform, TransformOutput

log = logging.getLogger(__name__)

Target = dict[str, Any]
Transform = Callable[..., TransformOutput]

# What DetectionDataset does with an image it cannot read.
ON_UNREADABLE = ("raise", "substitute", "blank")
_UNREADABLE_ACTION = {
    "substitute": "using the next readable image instead",
    "blank": "left out of the evaluation",
}


def item_generator(epoch_seed: int, index: int) -> torch.Generator:
    """A generator seeded from ``(epoch_seed, index)`` through numpy's SeedSequence mixing."""
    state = np.random.SeedSequence([epoch_seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class DetectionDataset(Dataset):
    """Samples plus a transform; items are ``(image Tensor[3, H, W], target dict)``.

    The target holds ``boxes`` (``Tensor[N, 4]`` xyxy in network-input pixels), ``labels``
    (``Tensor[N]`` int64), ``image_id`` (int), ``scale`` (float, network pixels per original
    pixel) and ``original_size`` (``(h, w)``).

    Args:
        data: a :class:`DetectionData` or a list of samples.
        transform: :class:`~efficientdet.data.transforms.TrainTransform`,
            :class:`~efficientdet.data.transforms.EvalTransform` or any callable
            ``(image, boxes, labels, generator) -> TransformOutput``.
        on_unreadable: what an image that cannot be read does. ``"raise"``: a
            :class:`~efficientdet.data.sample.DataError` naming the file. ``"substitute"``:
            the item is the next readable sample in index order instead (a training run goes
            on with full batches). ``"blank"``: the item is a black 1x1 image through the
            transform, with the sample's boxes, ``image_id`` and ``original_size``, and the
            target gets one more key, ``"unreadable"``, the message. Except with ``"raise"``,
            each unreadable file is logged once per process that meets it. A substituted
            item's target carries ``"replaced"``: ``[(index, message), ...]``, its own file
            and any other found unreadable while looking for the next one; giving a batch's targets
            to :meth:`note_replaced` in the main process tells the loader workers started
            after it (forked from it). A training run's loader keeps its workers for the
            whole run, so each of them logs a file it meets once.
        mix: the augmentations that combine images (mosaic, mixup, copy-paste), drawn for
            each item by :class:`~efficientdet.data.mix.MixAugment` with the item's
            generator; they need a :class:`~efficientdet.data.transforms.TrainTransform`.
            The other images they read are replaced by the next readable one when they
            cannot be read (unless ``on_unreadable="raise"``).

    Attributes:
        unreadable: sample index -> message, for the images found unreadable so far in this
            process.
    """

    def __init__(
        self,
        data: DetectionData | Sequence[DetectionSample],
        transform: Transform,
        *,
        on_unreadable: str = "raise",
        mix: MixAugment | None = None,
    ):
        if on_unreadable not in ON_UNREADABLE:
            raise ValueError(
                f"on_unreadable={on_unreadable!r} is not one of {', '.join(ON_UNREADABLE)}"
            )
        self.mix = mix if mix is not None and mix.active else None
        if self.mix is not None and not isinstance(transform, TrainTransform):
            raise ValueError(
                "mosaic, mixup and copy-paste need the training transform (TrainTransform), "
                f"got {type(transform).__name__}"
            )
        self.samples: list[DetectionSample] = list(
            data.samples if isinstance(data, DetectionData) else data
        )
        self.transform = transform
        self.on_unreadable = on_unreadable
        self.unreadable: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Target]:
        """Item by index, or by ``(index, epoch_seed)`` as :class:`SeededSampler` yields."""
        if isinstance(key, tuple):
            index, epoch_seed = key
            generator: torch.Generator | None = item_generator(epoch_seed, index)
        else:
            index, generator = key, None
        problem, replaced = None, None
        known = len(self.unreadable)
        try:
            image = self._read(index)
        except DataError as err:
            if self.on_unreadable == "raise":
                raise
            if self.on_unreadable == "blank":
                image, problem = Image.new("RGB", (1, 1)), str(err)
            else:
                first_bad = (index, str(err))
                index, image = self._next_readable(index)
                # Every file this item found unreadable: new entries come last in the dict.
                replaced = list(self.unreadable.items())[known:] or [first_bad]
        sample = self.samples[index]
        if self.mix is not None:
            assert isinstance(self.transform, TrainTransform)
            first = LabelledImage(F.pil_to_tensor(image), sample.boxes, sample.labels)
            out = self.mix(
                first, index, read=self._labelled, count=len(self.samples),
                transform=self.transform, generator=generator,
            )
        else:
            out = self.transform(image, sample.boxes, sample.labels, generator)
        target: Target = {
            "boxes": out.boxes,
            "labels": out.labels,
            "image_id": sample.image_id,
            "scale": out.scale,
            "original_size": sample.size,
        }
        if problem is not None:
            target["unreadable"] = problem
        if replaced is not None:
            target["replaced"] = replaced
        return out.image, target

    def note_replaced(self, targets: Sequence[Target]) -> None:
        """Record the unreadable files that a batch's substituted items report (see
        ``on_unreadable``), so that worker processes started later know them."""
        for target in targets:
            for index, message in target.get("replaced", ()):
                self.unreadable.setdefault(int(index), message)

    def _read(self, index: int) -> Image.Image:
        """The image of sample ``index``; a failure is recorded (and logged once) and re-raised."""
        try:
            return self.samples[index].load_image()
        except DataError as err:
            if self.on_unreadable != "raise" and index not in self.unreadable:
                log.warning("%s; %s", err, _UNREADABLE_ACTION[self.on_unreadable])
            self.unreadable[index] = str(err)
            raise

    def _labelled(self, index: int) -> LabelledImage:
        """Sample ``index`` as a uint8 tensor with its boxes, for the augmentations that
        combine images (the next readable sample when it cannot be read, unless raising)."""
        try:
            image = self._read(index)
        except DataError:
            if self.on_unreadable == "raise":
                raise
            index, image = self._next_readable(index)
        sample = self.samples[index]
        return LabelledImage(F.pil_to_tensor(image), sample.boxes, sample.labels)

    def _next_readable(self, index: int) -> tuple[int, Image.Image]:
        """The first readable sample after ``index`` (wrapping around) and its image."""
        count = len(self.samples)
        for offset in range(1, count):
            candidate = (index + offset) % count
            if candidate in self.unreadable:
                continue
            try:
                return candidate, self._read(candidate)
            except DataError:
                continue
        raise DataError(
            f"none of the {count} images can be read, e.g. {self.unreadable[index]}"
        )


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """Stack images to ``Tensor[B, 3, H, W]`` and keep the targets as a list of dicts.

    Raises:
        ValueError: images of different sizes (the transform must output one input size).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(image.shape) for image, _ in batch}
    if len(shapes) != 1:
        raise ValueError(
            f"images in a batch have different shapes {sorted(shapes)}; use a transform that "
            "outputs a fixed input size (TrainTransform / EvalTransform)"
        )
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]


class EpochSampler(Sampler[tuple[int, int]]):
    """``(index, epoch_seed)`` pairs for one epoch, a pure function of ``(seed, epoch)``.

    The order is shuffled per epoch and sharded over processes (rank ``r`` takes every
    ``world``-th index), truncated so that every process gets ``steps * batch`` items; ``start``
    skips the items of steps already done (resume).
    """

    def __init__(
        self, num_samples: int, *, seed: int, epoch: int, batch_size: int,
        start_step: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
    ) -> None:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_samples, generator=gen) if shuffle else torch.arange(num_samples)
        self.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        per_step = batch_size * world_size
        usable = (num_samples // per_step) * per_step
        mine = order[:usable].view(-1, world_size)[:, rank]
        self.indices = mine[start_step * batch_size :].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices:
            yield index, self.epoch_seed


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch_seed)``, each iteration the next epoch of :class:`EpochSampler`
    (one process, no truncation): a fresh order and epoch seed every pass.

    Args:
        num_samples: dataset length.
        shuffle: random order each epoch.
        seed: same seed, same sequence of epochs.
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = EpochSampler(
            self.num_samples, seed=self.seed, epoch=self.epoch, batch_size=1, shuffle=self.shuffle
        )
        self.epoch += 1
        yield from epoch


class RunSampler(Sampler[tuple[int, int]]):
    """The epochs of a training run one after another, each in :class:`EpochSampler`'s order,
    from ``(epoch, start_step)`` on: one loader, and one set of worker processes, serves the
    whole run instead of one per epoch. Every epoch yields a whole number of batches, so no
    batch straddles two epochs.

    Args:
        num_samples, seed, batch_size, rank, world_size: as :class:`EpochSampler`.
        epoch, start_step: where the run is (resume).

    The sampler never ends: the loader's user stops at the run's last step.
    """

    def __init__(
        self, num_samples: int, *, seed: int, batch_size: int, epoch: int = 0,
        start_step: int = 0, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.epoch, self.start_step = epoch, start_step
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start_step
        while True:
            yield from EpochSampler(
                self.num_samples, seed=self.seed, epoch=epoch, batch_size=self.batch_size,
                start_step=start, rank=self.rank, world_size=self.world_size,
            )
            epoch, start = epoch + 1, 0


def default_num_workers(processes_per_machine: int | None = None) -> int:
    """Loader worker processes for one training or evaluation process: the CPUs this process
    may use, shared among the machine's data-parallel processes (``LOCAL_WORLD_SIZE`` under
    torchrun), less one for the process itself; at most 8.

    On a 2-core machine one process gets 1 worker; 8 processes on 64 cores get 7 each.
    """
    if processes_per_machine is None:
        processes_per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, processes_per_machine) - 1))


def seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a worker from its torch seed (for user transforms)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_dataloader(
    dataset: DetectionDataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int | None = 0,
    seed: int = 0,
    drop_last: bool = False,
    device: torch.device | str | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader yielding ``(Tensor[B, 3, H, W], list of targets)``; the one builder for
    training, evaluation and prediction over a dataset.

    Args:
        dataset: the :class:`DetectionDataset` (or any dataset of ``(image, target)``).
        batch_size: images per batch.
        shuffle: new random order every epoch (training); ignored with ``sampler``.
        num_workers: loader processes (0 loads in the main process; None:
            :func:`default_num_workers`); workers stay alive between epochs.
        seed: order and augmentation are a function of this seed only, not of
            ``num_workers``.
        drop_last: drop the last incomplete batch (useful with batch norm in training).
        device: where batches go; memory is pinned only for CUDA (then copy batches with
            ``non_blocking=True``). None means CUDA if available.
        sampler: the items and their augmentation seeds, e.g. :class:`RunSampler`; default
            :class:`SeededSampler` over the whole dataset.

    Returns:
        ``torch.utils.data.DataLoader``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers is None:
        num_workers = default_num_workers()
    pin = resolve_device("auto" if device is None else device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else SeededSampler(len(dataset), shuffle=shuffle, seed=seed),
        num_workers=num_workers,
        collate_fn=collate_detection,
        pin_memory=pin,
        drop_last=drop_last,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
