"""Mosaic, mixup and copy-paste: boxes moved, clipped and dropped exactly as the pixels are
(hand-computed cases), and the draws of :class:`MixAugment` through the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficientdet.data import (
    DetectionDataset,
    DetectionSample,
    EvalTransform,
    TrainTransform,
    load_dataset,
)
from efficientdet.data.mix import PASTED, MixAugment, copy_paste, mixup, visible_part
from efficientdet.data.mosaic import LabelledImage, clip_boxes, mosaic, mosaic_layout
from efficientdet.data.transforms import TransformOutput

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixel / 255


def _solid(h: int, w: int, colour: tuple[int, int, int], boxes: list[list[float]], labels: list[int]) -> LabelledImage:
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).repeat(1, h, w)
    return LabelledImage(image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels))


# A 100 x 120 (H x W) mosaic meeting at (cx, cy) = (50, 40), worked out by hand:
# - red 50 x 60 (h x w), x2 -> 100 x 120, top-left corner at (50 - 120, 40 - 100) = (-70, -60),
#   shows (0, 0)-(50, 40). [40,30,55,45] -> [80,60,110,90] - (70,60) = [10,0,40,30], whole;
#   [32,25,40,35] -> [-6,-10,10,10], clipped to [0,0,10,10] = 100 of 320 px (31 %): kept;
#   [30,20,40,35] -> [-10,-20,10,10], clipped to 100 of 600 px (17 %): dropped.
# - green 100 x 100, x1, at (50, -60), shows (50, 0)-(120, 40). [10,70,30,90] -> [60,10,80,30];
#   [60,80,80,100] -> [110,20,130,40], clipped to [110,20,120,40] = 200 of 400: kept;
#   [60,50,90,80] -> [110,-10,140,20], clipped to 200 of 900 px (22 %): dropped.
# - blue 200 x 60, x0.5 -> 100 x 30, at (50 - 30, 40) = (20, 40), shows (20, 40)-(50, 100).
#   [20,20,60,60] -> [10,10,30,30] + (20,40) = [30,50,50,70]; [0,150,40,200] -> [20,115,40,140]:
#   below the output, dropped; [0,0,2,2] -> [20,40,21,41]: 1 px wide, dropped.
# - white 30 x 40, x3 -> 90 x 120, at (50, 40), shows (50, 40)-(120, 100). [0,0,10,10] ->
#   [50,40,80,70]; [20,15,40,30] -> [110,85,170,130], clipped to 150 of 2700 px: dropped.
# Nothing covers x < 20 below y = 40: the fill colour shows there.
MOSAIC_IMAGES = [
    _solid(50, 60, (255, 0, 0), [[40, 30, 55, 45], [32, 25, 40, 35], [30, 20, 40, 35]], [0, 2, 1]),
    _solid(100, 100, (0, 255, 0), [[10, 70, 30, 90], [60, 80, 80, 100], [60, 50, 90, 80]], [3, 4, 5]),
    _solid(200, 60, (0, 0, 255), [[20, 20, 60, 60], [0, 150, 40, 200], [0, 0, 2, 2]], [6, 7, 8]),
    _solid(30, 40, (255, 255, 255), [[0, 0, 10, 10], [20, 15, 40, 30]], [9, 10]),
]


def test_mosaic_layout_by_hand() -> None:
    tiles = mosaic_layout([(50, 60), (100, 100), (200, 60), (30, 40)], (100, 120), (50, 40))
    assert [t.resized for t in tiles] == [(100, 120), (100, 100), (100, 30), (90, 120)]
    assert [t.origin for t in tiles] == [(-70, -60), (50, -60), (20, 40), (50, 40)]
    assert [t.window for t in tiles] == [(0, 0, 50, 40), (50, 0, 120, 40), (20, 40, 50, 100), (50, 40, 120, 100)]


def test_mosaic_boxes_moved_clipped_and_dropped_by_hand() -> None:
    out = mosaic(MOSAIC_IMAGES, (100, 120), (50, 40), fill=(10, 20, 30))
    assert out.boxes.tolist() == [
        [10, 0, 40, 30], [0, 0, 10, 10], [60, 10, 80, 30], [110, 20, 120, 40], [30, 50, 50, 70], [50, 40, 80, 70],
    ]
    assert out.labels.tolist() == [0, 2, 3, 4, 6, 9] and out.labels.dtype == torch.int64
    image = out.image
    assert image.shape == (3, 100, 120) and image.dtype == torch.uint8

    def colour(y0: int, y1: int, x0: int, x1: int) -> set[tuple[int, ...]]:
        return {tuple(p) for p in image[:, y0:y1, x0:x1].reshape(3, -1).T.tolist()}

    assert colour(0, 40, 0, 50) == {(255, 0, 0)}
    assert colour(0, 40, 50, 120) == {(0, 255, 0)}
    assert colour(40, 100, 20, 50) == {(0, 0, 255)}
    assert colour(40, 100, 50, 120) == {(255, 255, 255)}
    assert colour(40, 100, 0, 20) == {(10, 20, 30)}


def test_a_centre_on_the_edge_hides_images_and_all_their_boxes() -> None:
    out = mosaic(MOSAIC_IMAGES, (100, 120), (0, 0))  # only the bottom-right image shows
    assert out.boxes.tolist() == [[0, 0, 30, 30], [60, 45, 120, 90]]
    assert out.labels.tolist() == [9, 10]
    with pytest.raises(ValueError, match="outside"):
        mosaic(MOSAIC_IMAGES, (100, 120), (121, 0))
    with pytest.raises(ValueError, match="takes 4 images"):
        mosaic(MOSAIC_IMAGES[:3], (100, 120), (50, 40))


def test_clip_boxes_rule() -> None:
    boxes = torch.tensor([[-5.0, 0, 5, 10], [-8.0, 0, 2, 10], [0.0, 0, 1.5, 10], [2.0, 2, 4, 4]])
    clipped, keep = clip_boxes(boxes, (0, 0, 10, 10), min_side=2.0, min_visible=0.5)
    assert clipped.tolist() == [[0, 0, 5, 10], [0, 0, 2, 10], [0, 0, 1.5, 10], [2, 2, 4, 4]]
    # half visible: kept; a fifth: dropped; 1.5 px wide: dropped; inside: kept
    assert keep.tolist() == [True, False, False, True]


def _output(image: torch.Tensor, boxes: list[list[float]], labels: list[int]) -> TransformOutput:
    return TransformOutput(
        image=image, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64), indices=torch.arange(len(labels)),
        scale=1.0, offset=(0, 0), flipped=False, original_size=tuple(image.shape[-2:]),
    )


def test_mixup_blends_pixels_and_keeps_both_box_sets() -> None:
    a = _output(torch.rand(3, 8, 10), [[1, 1, 4, 4]], [2])
    b = _output(torch.rand(3, 8, 10), [[5, 2, 9, 7], [0, 0, 3, 3]], [0, 1])
    out = mixup(a, b, 0.3)
    assert torch.allclose(out.image, 0.3 * a.image + 0.7 * b.image)
    assert out.boxes.tolist() == [[1, 1, 4, 4], [5, 2, 9, 7], [0, 0, 3, 3]]
    assert out.labels.tolist() == [2, 0, 1] and out.indices.tolist() == [0, PASTED, PASTED]
    with pytest.raises(ValueError, match="one size"):
        mixup(a, _output(torch.rand(3, 8, 12), [], []), 0.5)


def test_visible_part_by_hand() -> None:
    box = (0.0, 0.0, 10.0, 10.0)
    assert visible_part(box, []) == (100.0, box)
    assert visible_part(box, [(5, 0, 10, 10)]) == (50.0, (0.0, 0.0, 5.0, 10.0))
    assert visible_part(box, [(2, 2, 4, 4)]) == (96.0, box)  # a hole: the box stays
    assert visible_part(box, [(-5, -5, 15, 15)]) == (0.0, None)
    assert visible_part(box, [(0, 0, 10, 5), (0, 5, 5, 10)]) == (25.0, (5.0, 5.0, 10.0, 10.0))


def test_copy_paste_by_hand() -> None:
    # Target 20 x 30 of zeros; source of ones. Pasted rectangles (whole pixels around the
    # source boxes): S0 [1.5,1,9,9.5] -> (1,1,9,10), S1 [16,0,24,13] -> (16,0,24,13),
    # S2 [0,10,8,20] -> (0,10,8,20); S3 is not chosen.
    target = _output(torch.zeros(3, 20, 30), [[2, 2, 8, 8], [10, 2, 20, 12], [22, 14, 28, 18], [0, 12, 10, 20]],
                     [0, 1, 2, 3])
    source = _output(torch.ones(3, 20, 30), [[1.5, 1, 9, 9.5], [16, 0, 24, 13], [0, 10, 8, 20], [25, 15, 29, 19]],
                     [4, 5, 6, 7])
    out = copy_paste(target, source, [0, 1, 2], min_visible=0.25)
    # T0 lies under S0: dropped. T1 loses x 16..20 under S1: cut to [10,2,16,12] (60 %).
    # T2 is clear. T3 shows x 8..10 beside S2 only: 16 of 80 px (20 %), dropped.
    assert out.boxes.tolist() == [[10, 2, 16, 12], [22, 14, 28, 18], [1.5, 1, 9, 9.5], [16, 0, 24, 13], [0, 10, 8, 20]]
    assert out.labels.tolist() == [1, 2, 4, 5, 6]
    assert out.indices.tolist() == [1, 2, PASTED, PASTED, PASTED]
    expected = torch.zeros(20, 30)
    expected[1:10, 1:9] = 1
    expected[0:13, 16:24] = 1
    expected[10:20, 0:8] = 1
    assert torch.equal(out.image[0], expected) and torch.equal(out.image[2], expected)
    assert torch.equal(target.image, torch.zeros(3, 20, 30))  # the target is left as it was


def test_a_later_paste_hides_an_earlier_pasted_object() -> None:
    target = _output(torch.zeros(3, 20, 20), [], [])
    source = _output(torch.ones(3, 20, 20), [[2, 2, 6, 6], [0, 0, 10, 10]], [0, 1])
    out = copy_paste(target, source, [0, 1])
    assert out.boxes.tolist() == [[0, 0, 10, 10]] and out.labels.tolist() == [1]
    assert copy_paste(target, source, [1, 0]).labels.tolist() == [1, 0]  # the other order: both show


def test_a_pasted_rectangle_labels_the_neighbour_it_carries() -> None:
    # Source objects A [0,0,10,10], B [4,4,14,14] and C [12,12,20,20]; only B is pasted: its
    # rectangle (4,4,14,14) holds A's corner [4,4,10,10], 36 % of A: A comes along, cut to it.
    # It holds C's [12,12,14,14], 4 of 64 px (6 %): C stays behind, unlabelled.
    target = _output(torch.zeros(3, 20, 20), [[15, 0, 20, 5]], [9])
    source = _output(torch.ones(3, 20, 20), [[0, 0, 10, 10], [4, 4, 14, 14], [12, 12, 20, 20]], [1, 2, 3])
    out = copy_paste(target, source, [1], min_visible=0.25)
    assert out.boxes.tolist() == [[15, 0, 20, 5], [4, 4, 14, 14], [4, 4, 10, 10]]
    assert out.labels.tolist() == [9, 2, 1] and out.indices.tolist() == [0, PASTED, PASTED]
    # A chosen object is not carried as well: A pasted after B, once, whole; B shows an L
    # around A's rectangle (64 of 100 px), whose tight box is B's own.
    out = copy_paste(target, source, [1, 0], min_visible=0.25)
    assert out.boxes.tolist() == [[15, 0, 20, 5], [4, 4, 14, 14], [0, 0, 10, 10]]
    assert out.labels.tolist() == [9, 2, 1]
    # Under the 25 % rule a smaller share is left behind: A [0,0,10,10] and B' [8,8,18,18].
    source = _output(torch.ones(3, 20, 20), [[0, 0, 10, 10], [8, 8, 18, 18]], [1, 2])
    assert copy_paste(target, source, [1]).labels.tolist() == [9, 2]


def test_mix_augment_validates_its_settings() -> None:
    assert not MixAugment().active and MixAugment(mixup_prob=0.1).active
    with pytest.raises(ValueError, match=r"mosaic_prob must be in \[0, 1\], got 1.5"):
        MixAugment(mosaic_prob=1.5)
    with pytest.raises(ValueError, match="mixup_alpha must be positive"):
        MixAugment(mixup_alpha=0.0)
    with pytest.raises(ValueError, match="centre_range"):
        MixAugment(centre_range=(0.8, 0.2))
    assert MixAugment(mosaic_prob=0.5, mixup_prob=0.5).expected_reads() == pytest.approx(2.5 * 1.5)


@pytest.fixture(scope="module")
def demo_train(tiny_demo):
    return load_dataset(tiny_demo.data_yaml, "train")


ALL_ON = MixAugment(mosaic_prob=1.0, mixup_prob=0.5, copy_paste_prob=0.5)


def _same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> bool:
    return (torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
            and torch.equal(a[1]["labels"], b[1]["labels"]))


def test_dataset_items_are_a_function_of_the_seed(demo_train) -> None:
    transform = TrainTransform(128, hflip_prob=0.5, scale_range=(0.8, 1.25))
    dataset = DetectionDataset(demo_train, transform, mix=ALL_ON)
    again = DetectionDataset(demo_train, transform, mix=ALL_ON)
    for index in range(6):
        item = dataset[(index, 11)]
        assert item[0].shape == (3, 128, 128)
        assert _same(item, again[(index, 11)])
        boxes = item[1]["boxes"]
        assert bool(((boxes >= 0) & (boxes <= 128)).all())
        assert bool((boxes[:, 2:] > boxes[:, :2]).all())
    assert not all(_same(dataset[(i, 11)], dataset[(i, 12)]) for i in range(6))


def test_an_inactive_mix_leaves_the_items_as_they_were(demo_train) -> None:
    transform = TrainTransform(128)
    plain = DetectionDataset(demo_train, transform)
    off = DetectionDataset(demo_train, transform, mix=MixAugment())
    assert off.mix is None
    assert all(_same(plain[(i, 5)], off[(i, 5)]) for i in range(4))


COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255))


def test_mosaic_items_box_the_pixels_of_their_images(tmp_path, make_image) -> None:
    # Five 64 x 64 images of one colour each, boxed whole; with no flip, no jitter and a 64 px
    # input the mosaic is the network input, so each kept box must hold its image's colour alone.
    samples = [
        DetectionSample(make_image(tmp_path / f"{k}.png", 64, 64, colour), k + 1, (64, 64), [[0, 0, 64, 64]], [k])
        for k, colour in enumerate(COLOURS)
    ]
    transform = TrainTransform(64, hflip_prob=0.0, scale_range=(1.0, 1.0), **PLAIN)
    dataset = DetectionDataset(samples, transform, mix=MixAugment(mosaic_prob=1.0))
    several = 0
    for seed in range(10):
        image, target = dataset[(0, seed)]
        labels = target["labels"].tolist()
        several += len(set(labels)) > 1
        for box, label in zip(target["boxes"].tolist(), labels, strict=True):
            x0, y0, x1, y1 = (int(v) for v in box)
            assert [x0, y0, x1, y1] == box  # whole pixels: tile edges
            area = (x1 - x0) * (y1 - y0)
            assert area >= 0.25 * 64 * 64  # the min_visible rule
            inside = image[:, y0:y1, x0:x1].reshape(3, -1).T * 255
            assert torch.equal(inside.round(), torch.tensor(COLOURS[label], dtype=torch.float32).expand_as(inside))
    assert several > 5


def test_mixing_needs_the_training_transform(demo_train) -> None:
    with pytest.raises(ValueError, match="TrainTransform"):
        DetectionDataset(demo_train, EvalTransform(128), mix=ALL_ON)


def _one_box_images(count: int = 5) -> list[LabelledImage]:
    """``count`` 64 x 64 images, image ``j`` of colour ``COLOURS[j]`` with one box labelled ``j``."""
    return [_solid(64, 64, COLOURS[j], [[8, 8, 56, 56]], [j]) for j in range(count)]


def _draw(mix: MixAugment, index: int, seed: int, images: list[LabelledImage]) -> TransformOutput:
    transform = TrainTransform(64, hflip_prob=0.0, scale_range=(1.0, 1.0), **PLAIN)
    return mix(
        images[index], index, read=images.__getitem__, count=len(images), transform=transform,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("kind", ["mixup_prob", "copy_paste_prob"])
def test_mixup_and_copy_paste_bring_another_images_boxes_as_often_as_asked(kind: str) -> None:
    images = _one_box_images()
    always = MixAugment(**{kind: 1.0})
    for seed in range(20):
        out = _draw(always, 2, seed, images)
        pasted = out.indices == PASTED
        assert bool(pasted.any())
        assert all(label != 2 for label in out.labels[pasted].tolist())  # never the item itself
    never = MixAugment()
    assert all(not bool((_draw(never, 2, s, images).indices == PASTED).any()) for s in range(20))
    # At 0.3 the share of items with another image's boxes is 0.3 (binomial sd 0.026 at 300).
    sometimes = MixAugment(**{kind: 0.3})
    share = sum(bool((_draw(sometimes, 1, s, images).indices == PASTED).any()) for s in range(300)) / 300
    assert 0.22 < share < 0.38


def test_mosaic_items_hold_other_images_boxes() -> None:
    images = _one_box_images()
    labels = [set(_draw(MixAugment(mosaic_prob=1.0), 0, s, images).labels.tolist()) for s in range(20)]
    assert sum(len(found - {0}) > 0 for found in labels) >= 15
    assert all(set(_draw(MixAugment(), 0, s, images).labels.tolist()) == {0} for s in range(5))


def test_the_other_image_is_never_the_item_itself() -> None:
    from efficientdet.data.mix import _other

    rng = np.random.default_rng(0)
    drawn = [_other(3, 5, rng) for _ in range(500)]
    assert 3 not in drawn and set(drawn) == {0, 1, 2, 4}
    assert _other(0, 1, rng) == 0  # alone: itself
