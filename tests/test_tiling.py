"""Tiled inference: the tile layout and the merge across tiles, with a fake detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.inference.tiling import tile_layout, tiled_predict, tiled_predict_fn


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(1000, 1500, 512, 0.2), (512, 512, 512, 0.2), (700, 300, 256, 0.5), (1001, 999, 100, 0.0)],
)
def test_tiles_cover_the_image_with_the_overlap_asked(height, width, tile, overlap) -> None:
    tiles = tile_layout(height, width, tile, overlap)
    covered = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in tiles:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 == min(tile, width) and y2 - y1 == min(tile, height)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    # edge tiles: the first starts at 0, the last ends at the image's border
    assert xs[0] == 0 and ys[0] == 0
    assert xs[-1] + min(tile, width) == width and ys[-1] + min(tile, height) == height
    for starts, side in ((xs, min(tile, width)), (ys, min(tile, height))):
        for a, b in zip(starts, starts[1:], strict=False):
            shared = a + side - b
            assert shared >= overlap * side - 1  # rounding of the even spread
    assert len(tiles) == len(xs) * len(ys)


def test_tile_layout_counts_and_validation() -> None:
    # 1500 wide, 512 tiles, stride 409.6: ceil(988 / 409.6) + 1 = 4 columns
    assert len({t[0] for t in tile_layout(1000, 1500, 512, 0.2)}) == 4
    assert tile_layout(300, 200, 512) == [(0, 0, 200, 300)]
    assert tile_layout(100, 300, (100, 150), 0.0) == [(0, 0, 150, 100), (150, 0, 300, 100)]
    with pytest.raises(ValueError, match="overlap"):
        tile_layout(100, 100, 50, 1.0)
    with pytest.raises(ValueError, match="positive"):
        tile_layout(100, 100, 0)


def white_box_detector(calls: list[tuple[int, int]]):
    """Fake predict_fn: one box (label 0, score 0.9) around the white pixels of each image."""

    def predict(images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            calls.append(image.size)
            pixels = np.asarray(image)[..., 0] > 128
            ys, xs = np.nonzero(pixels)
            if len(xs) == 0:
                boxes = torch.zeros(0, 4)
            else:
                boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({
                "boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                "labels": torch.zeros(len(boxes), dtype=torch.int64),
            })
        return out

    return predict


def scene(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("merge", ["nms", "wbf"])
@pytest.mark.parametrize("full", [True, False])
def test_a_box_split_across_two_tiles_comes_back_once(merge: str, full: bool) -> None:
    # tiles of 100 px with overlap 0.3 over 170 px start at x = 0 and 70; the box at
    # x 90..120 is cut by the first tile's right edge (a partial box 90..100 there) and lies
    # whole in the second tile (70..170).
    image = scene(170, 100, (90, 40, 120, 60))
    calls: list[tuple[int, int]] = []
    (result,) = tiled_predict(
        white_box_detector(calls), [image], tile=100, overlap=0.3, merge=merge,
        include_full_image=full,
    )
    assert calls[: 1 if full else 0] == ([(170, 100)] if full else [])
    assert sorted(calls[1 if full else 0 :]) == [(100, 100), (100, 100)]
    assert result["boxes"].tolist() == [[90.0, 40.0, 120.0, 60.0]]
    assert result["labels"].tolist() == [0]
    assert result["scores"].tolist() == pytest.approx([0.9])


def test_without_dropping_edge_boxes_the_cut_part_comes_back_too() -> None:
    image = scene(170, 100, (90, 40, 120, 60))
    (result,) = tiled_predict(
        white_box_detector([]), [image], tile=100, overlap=0.3, include_full_image=False,
        drop_edge_boxes=False,
    )
    # the partial box 90..100 has IoU 1/3 with the whole one: NMS keeps both
    assert sorted(result["boxes"][:, 2].tolist()) == [100.0, 120.0]


def test_a_box_on_the_image_border_is_kept_and_small_images_run_once() -> None:
    image = scene(170, 100, (150, 0, 170, 30))  # touches the image's right and top borders
    (result,) = tiled_predict(white_box_detector([]), [image], tile=100, overlap=0.3, include_full_image=False)
    assert result["boxes"].tolist() == [[150.0, 0.0, 170.0, 30.0]]
    calls: list[tuple[int, int]] = []
    small = scene(80, 60, (10, 10, 20, 20))
    predict = tiled_predict_fn(white_box_detector(calls), tile=100, overlap=0.2)
    (result,) = predict([small])
    assert calls == [(80, 60)]
    assert result["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]]
    with pytest.raises(ValueError, match="overlap"):
        tiled_predict_fn(white_box_detector([]), tile=100, overlap=-0.1)
