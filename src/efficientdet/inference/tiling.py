"""Tiled inference: large images with small objects, cut into overlapping tiles.

A detector sees its input letterboxed to the model size (512 px for D0), so in a
4000 x 3000 photo an object of 40 px shrinks to 5 px, below the smallest anchor. Running the
network on overlapping tiles of, say, 640 px keeps such objects near their own size; the
whole image is run as well, for the objects larger than a tile. The detections of every
tile are shifted back into the image's pixels and merged (class-aware NMS, or weighted box
fusion) by :func:`efficientdet.detection.fusion.merge_detections`.

An object cut by a tile's inner edge shows up in that tile as a partial box. With an
overlap at least as wide as the object, it lies whole in a neighbouring tile, so partial
boxes touching an inner edge (an edge that is not the image's border) are dropped before the
merge (``drop_edge_boxes``); objects larger than the overlap come from the whole-image run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from ..detection.fusion import MERGE_METHODS, merge_detections
from .predictor import PredictFn, normalize_detections

__all__ = ["tile_layout", "tiled_predict", "tiled_predict_fn"]

# A box edge within this many pixels of a tile's inner edge counts as cut by it.
EDGE_MARGIN = 2.0


def _axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets along one axis: the first at 0, the last at ``length - tile``, evenly
    spread so that neighbours share at least ``overlap * tile`` pixels."""
    if length <= tile:
        return [0]
    stride = max(1.0, tile * (1.0 - overlap))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_layout(
    height: int, width: int, tile: int | tuple[int, int], overlap: float = 0.2
) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering an image.

    Args:
        height, width: image size in pixels.
        tile: tile side, or ``(tile_h, tile_w)``; an image side shorter than the tile gets
            one tile of the image's side along that axis.
        overlap: fraction of the tile side that neighbouring tiles share, in ``[0, 1)``; the
            tiles are spread evenly, so the actual overlap is this or a little more. The
            first tile of each axis starts at 0 and the last ends at the image's edge.

    Returns:
        Tiles as integer ``(x1, y1, x2, y2)`` pixel boxes, row-major (top row first).
    """
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile sides must be positive, got {tile_h}x{tile_w}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    ys = _axis_starts(height, tile_h, overlap)
    xs = _axis_starts(width, tile_w, overlap)
    return [(x, y, x + tile_w, y + tile_h) for y in ys for x in xs]


def _inner_edge_mask(
    boxes: Tensor, tile: tuple[int, int, int, int], size: tuple[int, int], margin: float
) -> Tensor:
    """``Tensor[K]`` bool: boxes (tile pixels) touching an edge of ``tile`` inside the image."""
    x1, y1, x2, y2 = tile
    height, width = size
    tile_w, tile_h = x2 - x1, y2 - y1
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= margin
    if y1 > 0:
        cut |= boxes[:, 1] <= margin
    if x2 < width:
        cut |= boxes[:, 2] >= tile_w - margin
    if y2 < height:
        cut |= boxes[:, 3] >= tile_h - margin
    return cut


def tiled_predict(
    predict_fn: PredictFn,
    images: Sequence[Image.Image],
    *,
    tile: int | tuple[int, int],
    overlap: float = 0.2,
    merge: str = "nms",
    iou_threshold: float | None = None,
    include_full_image: bool = True,
    drop_edge_boxes: bool = True,
    max_detections: int | None = 100,
    batch_size: int = 4,
) -> list[dict[str, Tensor]]:
    """Detections of each image from its tiles and (by default) the whole image, merged.

    Args:
        predict_fn: ``predict_fn(images: list[PIL.Image]) -> list[dict]`` returning per image
            ``{"boxes": Tensor[K, 4] xyxy in that image's pixels, "scores": Tensor[K],
            "labels": Tensor[K] int64}`` (a :class:`~efficientdet.detection.detector.Detector`'s
            ``predict``, an ONNX predictor, ...).
        images: RGB images.
        tile, overlap: the tile layout (:func:`tile_layout`), in the images' pixels.
        merge: ``"nms"`` (class-aware NMS) or ``"wbf"`` (weighted box fusion, each fused
            score the mean of its members' scores).
        iou_threshold: merge threshold; default 0.5 for NMS, 0.55 for WBF.
        include_full_image: run the whole image too (objects larger than a tile).
        drop_edge_boxes: drop tile boxes cut by an inner tile edge (module docstring).
        max_detections: detections kept per image after the merge, best first.
        batch_size: images per ``predict_fn`` call.

    Returns:
        Per image ``{"boxes": Tensor[K, 4] xyxy image pixels, "scores": Tensor[K],
        "labels": Tensor[K] int64}``, best first.
    """
    if merge not in MERGE_METHODS:
        raise ValueError(f"merge {merge!r} is not one of {', '.join(map(repr, MERGE_METHODS))}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    threshold = iou_threshold if iou_threshold is not None else (0.55 if merge == "wbf" else 0.5)
    # Every crop to run, with the image it belongs to and where it sits.
    jobs: list[tuple[int, tuple[int, int, int, int] | None, Image.Image]] = []
    for index, image in enumerate(images):
        layout = tile_layout(image.height, image.width, tile, overlap)
        if include_full_image or len(layout) == 1:
            jobs.append((index, None, image))
        if len(layout) > 1:
            jobs.extend((index, box, image.crop(box)) for box in layout)
    per_image: list[list[dict[str, Tensor]]] = [[] for _ in images]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        predictions = normalize_detections(predict_fn([crop for _, _, crop in chunk]), len(chunk))
        for (index, box, _), det in zip(chunk, predictions, strict=True):
            if box is not None:
                if drop_edge_boxes:
                    size = (images[index].height, images[index].width)
                    keep = ~_inner_edge_mask(det["boxes"], box, size, EDGE_MARGIN)
                    det = {k: v[keep] for k, v in det.items()}
                offset = torch.tensor([box[0], box[1], box[0], box[1]], dtype=torch.float32)
                det["boxes"] = det["boxes"] + offset
            per_image[index].append(det)
    return [
        merge_detections(
            dets, method=merge, iou_threshold=threshold, max_detections=max_detections,
            score_average="members",  # an object is in some tiles only: no penalty for the rest
        )
        for dets in per_image
    ]


def tiled_predict_fn(
    predict_fn: PredictFn,
    *,
    tile: int | tuple[int, int],
    overlap: float = 0.2,
    merge: str = "nms",
    iou_threshold: float | None = None,
    include_full_image: bool = True,
    max_detections: int | None = 100,
    batch_size: int = 4,
) -> PredictFn:
    """``predict_fn`` turned into one that runs :func:`tiled_predict` (same signature), for
    :func:`efficientdet.inference.predict.run_prediction`."""
    tile_layout(1, 1, tile, overlap)  # refuses a bad tile or overlap now, not at the first image

    def predict(images: list[Image.Image]) -> list[dict[str, Tensor]]:
        return tiled_predict(
            predict_fn, images, tile=tile, overlap=overlap, merge=merge,
            iou_threshold=iou_threshold, include_full_image=include_full_image,
            max_detections=max_detections, batch_size=batch_size,
        )

    return predict
