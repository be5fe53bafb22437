"""Anchors fitted to the data: best IoU over the grid, matched share, the search, the CLI."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.cli.main import main
from efficientdet.config import AnchorConfig
from efficientdet.detection.anchor_fit import (
    best_anchor_iou,
    fit_anchors,
    fit_aspect_ratios,
    format_anchor_fit,
    matched_share,
    override_args,
)
from efficientdet.detection.anchors import generate_anchors
from efficientdet.detection.boxes import box_iou
from efficientdet.train.config import load_config


def random_boxes(n: int, size: tuple[int, int], min_side: float, max_side: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = min_side + torch.rand(n, 2, generator=g, dtype=torch.float64) * (max_side - min_side)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([size[1], size[0]])
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1)


def tall_thin_boxes(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Boxes 5-7x taller than wide (pedestrians seen from afar, poles)."""
    g = torch.Generator().manual_seed(seed)
    h = 40 + torch.rand(n, generator=g, dtype=torch.float64) * 120
    w = h / (5 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    cx = w / 2 + torch.rand(n, generator=g, dtype=torch.float64) * (size - w)
    cy = h / 2 + torch.rand(n, generator=g, dtype=torch.float64) * (size - h)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


@pytest.mark.parametrize(
    ("size", "config"),
    [
        ((128, 128), AnchorConfig()),
        ((100, 140), AnchorConfig(anchor_scale=2.5, aspect_ratios=((1.0, 1.0), (0.4, 2.5)))),
        ((320, 320), AnchorConfig(num_scales=2)),
    ],
)
def test_best_anchor_iou_equals_the_brute_force_over_every_anchor(size, config) -> None:
    boxes = torch.cat([
        random_boxes(300, size, 2, 60, seed=1), random_boxes(100, size, 30, 200, seed=2),
        tall_thin_boxes(100, size=min(size), seed=3),
    ])
    anchors = generate_anchors(size, 3, 7, config, dtype=torch.float64)
    expected = box_iou(boxes, anchors).max(dim=1).values
    torch.testing.assert_close(best_anchor_iou(boxes, size, 3, 7, config), expected)


def test_fitted_ratios_follow_the_boxes() -> None:
    ratios = fit_aspect_ratios(tall_thin_boxes(500))
    assert len(ratios) == 3
    for w, h in ratios:
        assert 1 / 8 < w / h < 1 / 3  # every cluster is tall
    assert [w / h for w, h in ratios] == sorted(w / h for w, h in ratios)[::-1]


def test_fit_raises_the_matched_share_of_tall_thin_boxes() -> None:
    boxes = tall_thin_boxes(800)
    fit = fit_anchors(boxes, (256, 256), 3, 7)
    assert fit.base_share == pytest.approx(matched_share(boxes, (256, 256), 3, 7, AnchorConfig()))
    assert fit.base_share < 0.3
    assert fit.best_share > fit.base_share + 0.4
    assert fit.best.num_anchors == AnchorConfig().num_anchors  # the heads keep their shapes
    assert fit.best_share == pytest.approx(matched_share(boxes, (256, 256), 3, 7, fit.best))
    text = format_anchor_fit(fit)
    assert "train with: --set model.anchor_scale=" in text
    assert not fit.advice


def test_fit_of_tiny_boxes_lowers_the_scale_and_suggests_a_larger_input() -> None:
    boxes = random_boxes(600, (512, 512), 6, 14, seed=4)
    fit = fit_anchors(boxes, (512, 512), 3, 7)
    assert fit.base_share < 0.05
    assert fit.best.anchor_scale < 2.0
    assert fit.best_share > fit.base_share + 0.3
    assert fit.small_share >= 0.05 and fit.larger_input is not None
    assert fit.larger_input[0] == (1024, 1024) and fit.larger_input[1] > fit.best_share
    (note,) = fit.advice
    assert "P2 level" in note and "model.image_size=[1024, 1024]" in note


def test_well_fitting_anchors_are_kept() -> None:
    boxes = random_boxes(400, (512, 512), 40, 200, seed=5)
    boxes[:, 2:] = boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]).mean(dim=1, keepdim=True)  # squares
    fit = fit_anchors(boxes, (512, 512), 3, 7)
    assert fit.best_share >= fit.base_share
    assert fit.best_share - fit.base_share <= 0.05
    if fit.best == fit.base:
        assert "no override needed" in format_anchor_fit(fit)


def test_the_override_line_is_what_training_reads() -> None:
    fitted = AnchorConfig(anchor_scale=2.38, aspect_ratios=((0.45, 2.2), (0.4, 2.5), (0.35, 2.9)))
    args = shlex.split(override_args(fitted))  # as the shell splits the printed line
    sets = [a for a in args if a != "--set"]
    section = load_config(None, sets).model
    assert replace(AnchorConfig(), **section.anchor_overrides()) == fitted


def write_boxes_dataset(folder: Path, boxes_per_image: list[list[list[float]]], size: int = 256) -> Path:
    """A COCO dataset of grey images with the given xyxy boxes (one class)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, boxes in enumerate(boxes_per_image):
        Image.fromarray(np.full((size, size, 3), 100, dtype=np.uint8)).save(folder / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
        for x1, y1, x2, y2 in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    path = folder / "annotations.json"
    path.write_text(json.dumps({
        "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pole"}],
    }))
    return path


def test_check_data_reports_unmatched_boxes_and_fits(tmp_path: Path, capsys) -> None:
    boxes = tall_thin_boxes(60).tolist()
    path = write_boxes_dataset(tmp_path / "tall", [boxes[i : i + 10] for i in range(0, 60, 10)])
    assert main(["check-data", "--data", str(path), "--model", "efficientdet_test", "--image-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "anchors of efficientdet_test at input 256x256:" in out
    unmatched = float(out.split("at input 256x256: ")[1].split("%")[0])
    assert unmatched > 70
    assert main(["check-data", "--data", str(path), "--model", "efficientdet_test",
                 "--image-size", "256", "--fit-anchors"]) == 0
    out = capsys.readouterr().out
    assert "fitted anchors (scale" in out and "train with: --set model.anchor_scale=" in out
    fitted = float(out.split("fitted anchors")[1].split("): ")[1].split("%")[0])
    assert fitted > 100 - unmatched + 40
