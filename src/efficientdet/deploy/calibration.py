"""Calibration images for post-training int8 quantization, taken from the user's dataset.

Every format's quantizer (ONNX Runtime static quantization, NNCF for OpenVINO, LiteRT's) sees
the same inputs: images of one split, letterboxed and normalised exactly as ``predict`` feeds
the network (:func:`~efficientdet.detection.transform.preprocess_batch`), one image a batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "Calibration", "calibration_images"]

DEFAULT_CALIBRATION_IMAGES = 300


@dataclass(frozen=True)
class Calibration:
    """Calibration inputs for one export.

    Attributes:
        batches: ``float32[1, 3, H, W]`` arrays, letterboxed and normalised for the network.
        source: where they came from, for the log (``"data.yaml (train, 300 of 1200)"``).
    """

    batches: list[np.ndarray]
    source: str

    def __len__(self) -> int:
        return len(self.batches)


def calibration_images(
    data: str | Path,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    split: str = "train",
    count: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> Calibration:
    """``count`` images of ``data``'s ``split`` (all when it has fewer), chosen at random
    with ``seed``, as network inputs of ``image_size``.

    Args:
        data: anything :func:`efficientdet.data.load_dataset` reads (a YAML data file, COCO
            JSON, VOC / YOLO folder), or a folder of images (no labels needed).
        image_size: ``(H, W)`` of the exported input.
        mean, std: the model's normalisation, 0..1 units.
        split: the split to read (ignored for a plain folder of images).
        count: images to take, at least 1.
        seed: which images.

    Raises:
        ValueError: ``count`` below 1, or no image found.
    """
    from ..detection.transform import preprocess_batch

    if count < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {count}")
    paths = _image_paths(Path(data), split)
    if not paths:
        raise ValueError(f"{data}: no images to calibrate with (split {split!r})")
    chosen = sorted(random.Random(seed).sample(range(len(paths)), min(count, len(paths))))
    norm_mean = (float(mean[0]), float(mean[1]), float(mean[2]))
    norm_std = (float(std[0]), float(std[1]), float(std[2]))
    batches = []
    for index in chosen:
        batch, _ = preprocess_batch([paths[index]], image_size, norm_mean, norm_std)
        batches.append(np.ascontiguousarray(batch.numpy(), dtype=np.float32))
    return Calibration(batches, f"{data} ({split}, {len(chosen)} of {len(paths)} images)")


def _image_paths(data: Path, split: str) -> list[Path]:
    """The image files of a dataset's split, or of a plain folder of images."""
    from ..data import load_dataset
    from ..data.sample import DataError
    from ..inference.sources import IMAGE_EXTENSIONS

    try:
        return [sample.image_path for sample in load_dataset(data, split).samples]
    except DataError:
        if not data.is_dir():
            raise
    return sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
