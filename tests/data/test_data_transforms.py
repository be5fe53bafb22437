"""Augmentation and letterbox keep boxes consistent with the pixels."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from efficientdet.data.transforms import (
    EvalTransform,
    TrainTransform,
    augmented_to_original,
    build_transform,
)

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixel / 255, padding 0


def _rectangle_image(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Black ``[3, h, w]`` uint8 with a white rectangle covering pixel edges ``box`` (xyxy)."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 255
    return image


def _white_bounds(image: torch.Tensor) -> list[float] | None:
    """Pixel-edge box of the pixels brighter than half, or None."""
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize(("h", "w", "size"), [(120, 160, 96), (160, 90, (64, 112))])
def test_train_boxes_follow_the_white_rectangle(h, w, size) -> None:
    box = (30, 40, 80, 100) if h == 120 else (20, 50, 70, 110)
    image = _rectangle_image(h, w, box)
    transform = TrainTransform(size, **PLAIN)
    seen_flip = seen_drop = seen_kept = 0
    for seed in range(40):
        out = transform(
            image,
            torch.tensor([box], dtype=torch.float32),
            torch.tensor([3]),
            torch.Generator().manual_seed(seed),
        )
        assert out.image.shape == (3, *transform.input_size) and out.image.dtype == torch.float32
        white = _white_bounds(out.image)
        seen_flip += out.flipped
        if out.boxes.shape[0] == 0:
            seen_drop += 1
            # Dropped only when (almost) nothing of the rectangle is visible.
            assert white is None or min(white[2] - white[0], white[3] - white[1]) <= 2
            continue
        seen_kept += 1
        assert out.labels.tolist() == [3] and out.indices.tolist() == [0]
        assert white is not None
        assert out.boxes[0].tolist() == pytest.approx(white, abs=1.5)
    assert seen_flip and seen_kept  # both branches exercised


def test_eval_letterbox_top_left_pad_and_map_back() -> None:
    box = (10, 5, 60, 45)
    image = _rectangle_image(50, 100, box)
    out = EvalTransform(64, **PLAIN)(
        image, torch.tensor([box], dtype=torch.float32), torch.tensor([0])
    )
    assert out.scale == pytest.approx(0.64) and out.offset == (0, 0) and not out.flipped
    assert out.image.shape == (3, 64, 64)
    assert torch.all(out.image[:, 32:, :] == 0)  # padded at the bottom
    assert out.boxes[0].tolist() == pytest.approx([6.4, 3.2, 38.4, 28.8])
    assert out.boxes[0].tolist() == pytest.approx(_white_bounds(out.image), abs=1.0)
    back = augmented_to_original(out.boxes, out)
    assert back[0].tolist() == pytest.approx(list(map(float, box)), abs=1e-4)


def test_train_map_back_with_offset_and_flip() -> None:
    box = (30, 20, 50, 40)
    image = _rectangle_image(80, 80, box)
    transform = TrainTransform(64, hflip_prob=1.0, scale_range=(1.5, 1.5), **PLAIN)
    out = transform(
        image,
        torch.tensor([box], dtype=torch.float32),
        torch.tensor([1]),
        torch.Generator().manual_seed(3),
    )
    assert out.flipped and out.scale == pytest.approx(1.2)
    back = augmented_to_original(out.boxes, out)
    assert back[0].tolist() == pytest.approx(list(map(float, box)), abs=0.5)


def test_boxes_outside_the_crop_are_dropped_and_cut_boxes_clipped() -> None:
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[70.0, 10.0, 90.0, 30.0], [40.0, 10.0, 60.0, 30.0], [49.5, 0, 52, 5]])
    out = TrainTransform(50, **PLAIN).apply(
        image, boxes, torch.tensor([0, 1, 2]), scale=1.0, offset=(0, 0), flip=False
    )
    assert out.indices.tolist() == [1]  # the third keeps only 0.5 px: degenerate
    assert out.boxes.tolist() == [[40.0, 10.0, 50.0, 30.0]]
    assert out.labels.tolist() == [1]


def test_switched_off_training_equals_evaluation_and_normalises() -> None:
    image = Image.new("RGB", (90, 60), (255, 128, 0))
    boxes, labels = torch.tensor([[5.0, 5.0, 40.0, 30.0]]), torch.tensor([2])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    plain = TrainTransform(48, mean=mean, std=std, hflip_prob=0.0, scale_range=(1.0, 1.0))
    evaluation = build_transform(48, train=True, augment=False, mean=mean, std=std)
    assert isinstance(evaluation, EvalTransform)
    a, b = plain(image, boxes, labels), evaluation(image, boxes, labels)
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    expected = torch.tensor([(1.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (0.0 - 0.5) / 1.0])
    assert torch.allclose(a.image[:, 0, 0], expected, atol=1e-6)
    assert torch.all(a.image[:, 40:, :] == 0)  # 60 x 90 -> 32 x 48, padding is the mean


def test_same_generator_same_augmentation() -> None:
    image = _rectangle_image(64, 64, (8, 8, 40, 40))
    boxes, labels = torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([0])
    transform = TrainTransform(48)
    a = transform(image, boxes, labels, torch.Generator().manual_seed(11))
    b = transform(image, boxes, labels, torch.Generator().manual_seed(11))
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    assert (a.scale, a.offset, a.flipped) == (b.scale, b.offset, b.flipped)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(64, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="input size"):
        EvalTransform((64, 64, 3))
    with pytest.raises(ValueError, match="RGB image"):
        EvalTransform(32)(
            torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(0, 4), torch.zeros(0)
        )


def test_colour_jitter_changes_pixels_not_boxes_and_off_draws_nothing() -> None:
    rng = torch.Generator().manual_seed(3)
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[0], image[1], image[2] = 200, 80, 40  # orange; resized by 96 / 80 to 72 x 96, padded below
    boxes, labels = torch.tensor([[10.0, 10.0, 40.0, 30.0]]), torch.tensor([1])
    plain = TrainTransform(96, hsv=(0.0, 0.0, 0.0), scale_range=(1.0, 1.0), **PLAIN)
    jitter = TrainTransform(96, hsv=(0.1, 0.7, 0.4), scale_range=(1.0, 1.0), **PLAIN)
    a = plain(image, boxes, labels, torch.Generator().manual_seed(5))
    b = jitter(image, boxes, labels, torch.Generator().manual_seed(5))
    # the same geometry (the colour draws come after it): same boxes, flip and padding
    assert torch.equal(a.boxes, b.boxes) and a.flipped == b.flipped
    assert torch.equal(a.image[:, 72:, :], torch.zeros(3, 24, 96)) and torch.equal(b.image[:, 72:, :], a.image[:, 72:, :])
    assert not torch.allclose(a.image[:, :72, :], b.image[:, :72, :], atol=0.02)
    # off, nothing more is drawn from the generator than the four geometry draws
    before = rng.get_state()
    plain(image, boxes, labels, rng)
    after = rng.get_state()
    rng.set_state(before)
    torch.rand(4, generator=rng)
    assert torch.equal(after, rng.get_state())


def test_brightness_jitter_scales_a_gray_image_within_its_range() -> None:
    image = torch.full((3, 64, 64), 100, dtype=torch.uint8)
    transform = TrainTransform(64, hsv=(0.0, 0.0, 0.4), scale_range=(1.0, 1.0), hflip_prob=0.0, **PLAIN)
    levels = set()
    for seed in range(40):
        out = transform(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.Generator().manual_seed(seed))
        value = float(out.image.mean()) * 255
        assert 100 * 0.6 - 1 <= value <= 100 * 1.4 + 1
        assert float(out.image.std()) < 1e-6  # uniform stays uniform: gray has no hue or saturation
        levels.add(round(value))
    assert min(levels) < 75 and max(levels) > 125  # the whole range is used


def test_colour_jitter_ranges_are_checked() -> None:
    from efficientdet.train.config import DataSection

    with pytest.raises(ValueError, match="hsv"):
        TrainTransform(64, hsv=(0.6, 0.0, 0.0))
    with pytest.raises(ValueError, match="hsv"):
        TrainTransform(64, hsv=(0.0, 1.5, 0.0))
    with pytest.raises(ValueError, match="data.hsv_h"):
        DataSection(hsv_v=-0.1)
    assert DataSection(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4).hsv == (0.015, 0.7, 0.4)
