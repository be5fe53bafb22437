"""Tests for efficientdet.inference.visualize: boxes land where they should, thresholds, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.inference.visualize import (
    PALETTE,
    add_legend,
    color_for_label,
    default_line_width,
    draw_detections,
    draw_ground_truth,
    make_grid,
)

GRAY = (40, 40, 40)


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """``[H, W]`` bool: pixels that differ."""
    return np.any(np.asarray(before) != np.asarray(after), axis=2)


def test_palette_colours_are_distinct_and_cycle():
    assert len(set(PALETTE)) == len(PALETTE) >= 20
    assert color_for_label(0) == PALETTE[0]
    assert color_for_label(len(PALETTE) + 3) == PALETTE[3]


def test_draw_detections_draws_outline_in_class_colour_only_on_the_box():
    image = Image.new("RGB", (200, 100), GRAY)
    out = draw_detections(
        image, torch.tensor([[50.0, 40.0, 150.0, 90.0]]), torch.tensor([0.9]),
        torch.tensor([2]), line_width=2,
    )
    assert out is not image and out.size == image.size
    assert image.getpixel((50, 60)) == GRAY  # the input is untouched
    colour = color_for_label(2)
    for edge in [(50, 60), (51, 60), (149, 60), (100, 89), (100, 40)]:
        assert out.getpixel(edge) == colour
    assert out.getpixel((100, 65)) == GRAY  # inside stays clear
    changed = _changed(image, out)
    # Nothing drawn right of or below the box; the tag may only extend above it.
    assert not changed[:, 151:].any()
    assert not changed[91:, :].any()
    assert changed[:40, 50:150].any()


def test_draw_detections_one_colour_for_every_box():
    image = Image.new("RGB", (120, 60), GRAY)
    out = draw_detections(
        image, [[10, 30, 50, 55], [60, 30, 110, 55]], [0.9, 0.8], [0, 1], color=(1, 2, 3),
        line_width=1,
    )
    assert out.getpixel((10, 40)) == out.getpixel((60, 40)) == (1, 2, 3)


def test_add_legend_puts_a_strip_above_the_image():
    image = Image.new("RGB", (400, 50), (200, 0, 0))
    out = add_legend(image, [("found", (255, 255, 255), True), ("false", (0, 255, 0), False)])
    strip = out.height - image.height
    assert out.width == 400 and strip == 14 + 2 * 7
    assert out.getpixel((0, strip)) == (200, 0, 0) and out.getpixel((399, out.height - 1)) == (200, 0, 0)
    colours = {tuple(c) for c in np.asarray(out)[:strip].reshape(-1, 3)}
    assert (0, 255, 0) in colours and (255, 255, 255) in colours
    narrow = add_legend(Image.new("RGB", (10, 10)), [("a long legend entry", (9, 9, 9), False)])
    assert narrow.width > 10  # the strip is never cut


def test_draw_detections_respects_score_threshold():
    image = Image.new("RGB", (120, 120), GRAY)
    boxes = [[10, 60, 50, 110], [70, 60, 110, 110]]
    out = draw_detections(image, boxes, [0.8, 0.2], [0, 1], score_threshold=0.5, line_width=1)
    changed = _changed(image, out)
    assert changed[60:111, 10:51].any()
    assert not changed[:, 60:].any()
    everything = draw_detections(image, boxes, [0.8, 0.2], [0, 1], score_threshold=0.0)
    assert _changed(image, everything)[60:111, 70:111].any()


def test_draw_detections_tag_shows_class_name_with_contrasting_text():
    image = Image.new("RGB", (200, 120), GRAY)
    box = torch.tensor([[20.0, 60.0, 180.0, 110.0]])
    out = draw_detections(
        image, box, torch.tensor([0.75]), torch.tensor([2]),
        class_names=["cat", "dog", "giraffe"], font_size=14,
    )
    tag = np.asarray(out)[:60, 20:180]
    colours = {tuple(c) for c in tag.reshape(-1, 3)}
    background = color_for_label(2)  # yellow: black text reads better
    assert background in colours
    assert (0, 0, 0) in colours
    # A longer name makes a wider tag.
    short = draw_detections(image, box, [0.75], [0], class_names=["a", "b", "c"], font_size=14)
    assert _changed(image, out)[:60].sum() > _changed(image, short)[:60].sum()


def test_draw_detections_accepts_empty_and_mapping_names_and_odd_modes():
    gray = Image.new("L", (32, 32), 100)
    out = draw_detections(gray, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (100, 100, 100)
    named = draw_detections(gray, [[2, 20, 30, 30]], [0.5], [7], class_names={7: "x"})
    assert named.getpixel((2, 25)) == color_for_label(7)


def test_draw_detections_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="scores"):
        draw_detections(Image.new("RGB", (8, 8)), [[0, 0, 4, 4]], [0.5, 0.6], [1])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        draw_detections(Image.new("RGB", (8, 8)), [[0, 0, 4]], [0.5], [1])


def test_line_width_scales_with_image_size():
    assert default_line_width((100, 100)) == 1
    assert default_line_width((1920, 1080)) == 4
    big = Image.new("RGB", (1000, 1000), GRAY)
    out = draw_detections(big, [[100, 500, 900, 900]], [0.9], [0])
    row = np.asarray(out)[700]
    left_edge = np.flatnonzero(np.any(row != GRAY, axis=1))
    assert left_edge[0] == 100 and left_edge[:4].tolist() == [100, 101, 102, 103]


def test_draw_ground_truth_is_dashed():
    image = Image.new("RGB", (200, 100), GRAY)
    out = draw_ground_truth(image, [[20, 20, 180, 80]], color=(255, 255, 255), line_width=1)
    top_edge = np.asarray(out)[20, 20:181]
    drawn = np.all(top_edge == 255, axis=1)
    assert 0.3 < drawn.mean() < 0.8  # dashes and gaps
    assert out.getpixel((100, 50)) == GRAY


def test_draw_ground_truth_tags_below_box_in_class_colour():
    image = Image.new("RGB", (120, 120), GRAY)
    out = draw_ground_truth(image, [[10, 10, 100, 50]], [1], ["a", "b"], line_width=1)
    changed = _changed(image, out)
    assert changed[51:80, 10:60].any()  # tag under the bottom-left corner
    assert not changed[:9].any()  # nothing above the box
    assert color_for_label(1) in {tuple(c) for c in np.asarray(out)[10].tolist()}


def test_make_grid_layout():
    images = [Image.new("RGB", (20, 10), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    grid = make_grid(images, cols=2, padding=2)
    assert grid.size == (2 * 20 + 3 * 2, 2 * 10 + 3 * 2)
    assert grid.getpixel((2, 2)) == (255, 0, 0)
    assert grid.getpixel((24, 2)) == (0, 255, 0)
    assert grid.getpixel((2, 14)) == (0, 0, 255)
    assert grid.getpixel((30, 18)) == (0, 0, 0)  # empty cell


def test_make_grid_cell_size_and_errors():
    images = [Image.new("RGB", (100, 50), (9, 9, 9)), Image.new("L", (10, 10), 200)]
    grid = make_grid(images, cols=5, cell_size=(40, 40), padding=0)
    assert grid.size == (80, 40)
    assert grid.getpixel((20, 20)) == (9, 9, 9)  # 100x50 shrunk to 40x20, centred
    assert grid.getpixel((20, 5)) == (0, 0, 0)
    assert grid.getpixel((60, 20)) == (200, 200, 200)
    with pytest.raises(ValueError, match="at least one"):
        make_grid([], cols=2)
    with pytest.raises(ValueError, match="cols"):
        make_grid(images, cols=0)
