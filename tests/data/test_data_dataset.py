"""DetectionDataset, collate and the DataLoader builder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import efficientdet.data
from efficientdet.data.dataset import (
    DetectionDataset,
    SeededSampler,
    build_dataloader,
    collate_detection,
)
from efficientdet.data.sample import DetectionSample
from efficientdet.data.transforms import EvalTransform, TrainTransform


def _samples(tmp_path, make_image, n: int = 5) -> list[DetectionSample]:
    samples = []
    for i in range(n):
        w, h = 40 + 8 * i, 30
        path = make_image(tmp_path / f"{i}.png", w, h, color=(20 * i, 50, 90))
        boxes = [[2.0, 3.0, 20.0, 25.0]] * (i % 3)
        samples.append(DetectionSample(path, 100 + i, (h, w), boxes, [i % 2] * (i % 3)))
    return samples


def test_item_and_target_contract(tmp_path, make_image) -> None:
    dataset = DetectionDataset(_samples(tmp_path, make_image), EvalTransform(32))
    image, target = dataset[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert set(target) == {"boxes", "labels", "image_id", "scale", "original_size"}
    assert target["image_id"] == 102 and target["original_size"] == (30, 56)
    assert target["scale"] == pytest.approx(32 / 56)
    assert target["boxes"].shape == (2, 4) and target["labels"].dtype == torch.int64
    # Boxes follow the pixels: the 30 px height became round(30 * 32 / 56) = 17 rows.
    sx, sy = 32 / 56, 17 / 30
    assert target["boxes"][0].tolist() == pytest.approx([2 * sx, 3 * sy, 20 * sx, 25 * sy])


def test_collate_stacks_images_and_lists_targets(tmp_path, make_image) -> None:
    dataset = DetectionDataset(_samples(tmp_path, make_image), EvalTransform((24, 40)))
    images, targets = collate_detection([dataset[i] for i in range(3)])
    assert images.shape == (3, 3, 24, 40)
    assert [t["boxes"].shape[0] for t in targets] == [0, 1, 2]
    with pytest.raises(ValueError, match="different shapes"):
        collate_detection([(torch.zeros(3, 4, 4), {}), (torch.zeros(3, 5, 4), {})])


def test_loader_is_reproducible_and_independent_of_workers(tmp_path, make_image) -> None:
    dataset = DetectionDataset(_samples(tmp_path, make_image), TrainTransform(32))

    def run(workers: int, seed: int) -> list[tuple]:
        loader = build_dataloader(
            dataset, batch_size=2, shuffle=True, num_workers=workers, seed=seed, device="cpu"
        )
        assert not loader.pin_memory
        return [
            (images.clone(), [t["image_id"] for t in targets], [t["boxes"] for t in targets])
            for _ in range(2)  # two epochs
            for images, targets in loader
        ]

    first, again, other = run(0, seed=5), run(1, seed=5), run(0, seed=6)
    assert len(first) == 6  # 3 batches per epoch
    for (ia, ida, ba), (ib, idb, bb) in zip(first, again, strict=True):
        assert ida == idb and torch.equal(ia, ib)
        assert all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
    ids = [i for _, batch_ids, _ in first for i in batch_ids]
    assert sorted(ids[:5]) == [100, 101, 102, 103, 104]  # each epoch is a permutation
    assert ids[:5] != ids[5:] or not torch.equal(first[0][0], first[3][0])  # epochs differ
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_seeded_sampler_orders() -> None:
    ordered = list(SeededSampler(4, shuffle=False, seed=0))
    assert [i for i, _ in ordered] == [0, 1, 2, 3]
    assert len({seed for _, seed in ordered}) == 1  # one seed per epoch
    sampler = SeededSampler(4, shuffle=True, seed=0)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert sorted(i for i, _ in epoch1) == [0, 1, 2, 3]
    assert epoch1[0][1] != epoch2[0][1]
    with pytest.raises(ValueError, match="batch_size"):
        build_dataloader(DetectionDataset([], EvalTransform(8)), batch_size=0, shuffle=False)


def test_data_package_does_not_import_the_model() -> None:
    """Every import in efficientdet/data stays in the package, the shared config, the device
    helper, or the letterbox shared with prediction (which imports nothing of the package)."""
    package = Path(efficientdet.data.__file__).parent
    allowed_internal = {"", "config", "devices", "detection.transform"}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in allowed_internal, f"{path.name} imports ..{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("efficientdet"), f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                assert not any(n.startswith("efficientdet") for n in names), path.name
