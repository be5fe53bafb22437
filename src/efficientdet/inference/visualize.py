"""Pictures of detections: boxes with class-coloured outlines and labelled tags, grids.

Every drawing function returns a new image and leaves its input untouched. Boxes are xyxy
in the image's own pixels (``Tensor[N, 4]``, a numpy array or nested lists). Predictions
are solid outlines with the tag above the box's top-left corner; ground truth is dashed
with the tag below the box's bottom-left corner, so both can be drawn on one picture.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE",
    "add_legend",
    "color_for_label",
    "default_font_size",
    "default_line_width",
    "draw_detections",
    "draw_ground_truth",
    "make_grid",
]

Color = tuple[int, int, int]
ClassNames = Sequence[str] | Mapping[int, str]

# Twenty colours far apart from each other and from both black and white text backgrounds;
# label i gets PALETTE[i % 20], so neighbouring class ids look different.
PALETTE: tuple[Color, ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
    (220, 190, 255),  # lavender
    (170, 110, 40),  # brown
    (255, 250, 200),  # beige
    (128, 0, 0),  # maroon
    (170, 255, 195),  # mint
    (128, 128, 0),  # olive
    (255, 215, 180),  # apricot
    (0, 0, 128),  # navy
    (128, 128, 128),  # grey
)


def color_for_label(label: int) -> Color:
    """The palette colour of class ``label`` (cycles after ``len(PALETTE)`` classes)."""
    return PALETTE[int(label) % len(PALETTE)]


def _text_color(background: Color) -> Color:
    """Black or white, whichever reads better on ``background`` (ITU-R BT.601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _as_numpy(values: Any, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _as_boxes(boxes: Any) -> np.ndarray:
    array = _as_numpy(boxes, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] xyxy, got shape {array.shape}")
    return array


def _check_length(array: np.ndarray, n: int, name: str) -> np.ndarray:
    array = array.reshape(-1)
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} values for {n} boxes")
    return array


def _class_name(label: int, class_names: ClassNames | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return class_names.get(label, str(label))
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def default_line_width(size: tuple[int, int]) -> int:
    """Outline width for an image of ``size = (W, H)``: 1 px per 250 px of the short side."""
    return max(1, round(min(size) / 250))


def default_font_size(size: tuple[int, int]) -> int:
    """Tag text height for an image of ``size = (W, H)``: 1/40 of the short side, at least 10."""
    return max(10, round(min(size) / 40))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font scales when FreeType is present; otherwise load_default gives
    # a fixed-size bitmap font and ignores ``size``.
    return ImageFont.load_default(size=size)


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[float, float],
    color: Color,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    image_size: tuple[int, int],
    above: bool,
) -> None:
    """A filled rectangle with ``text``, its left edge at ``anchor[0]``; kept inside the image.

    ``above``: the tag's bottom edge sits on ``anchor[1]`` (moved inside the box when there
    is no room above); otherwise its top edge does.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tag_w = right - left + 2 * pad
    tag_h = bottom - top + 2 * pad
    width, height = image_size
    x = min(max(0.0, anchor[0]), max(0.0, width - tag_w))
    y = anchor[1] - tag_h if above else anchor[1]
    if y < 0:
        y = anchor[1] if above else 0.0
    y = min(y, max(0.0, height - tag_h))
    draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def draw_detections(
    image: Image.Image,
    boxes: Any,
    scores: Any,
    labels: Any,
    class_names: ClassNames | None = None,
    score_threshold: float = 0.3,
    *,
    color: Color | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Draw predicted boxes whose score is at least ``score_threshold``.

    Each kept box gets a solid outline in its class colour (:data:`PALETTE`) and a filled
    tag ``"<class name> <score>"`` above its top-left corner in black or white, whichever
    contrasts. Higher scores are drawn last, so they end up on top.

    Args:
        image: the picture the boxes belong to (any mode; drawn on an RGB copy).
        boxes: ``[N, 4]`` xyxy in image pixels (tensor, array or lists).
        scores: ``[N]`` confidences.
        labels: ``[N]`` class indices 0..C-1.
        class_names: names by label (a sequence or a mapping); labels without a name show
            their number.
        score_threshold: boxes below it are not drawn.
        color: one colour for every box (e.g. by match status); default is the class colour.
        line_width: outline width in pixels; default scales with the image
            (:func:`default_line_width`).
        font_size: tag text size in pixels; default scales with the image.

    Returns:
        A new RGB image of the same size.
    """
    box_array = _as_boxes(boxes)
    n = len(box_array)
    score_array = _check_length(_as_numpy(scores, np.float64), n, "scores")
    label_array = _check_length(_as_numpy(labels, np.int64), n, "labels")

    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width = line_width if line_width is not None else default_line_width(canvas.size)
    font = _font(font_size if font_size is not None else default_font_size(canvas.size))
    draw = ImageDraw.Draw(canvas)

    keep = np.flatnonzero(score_array >= score_threshold)
    for i in keep[np.argsort(score_array[keep], kind="stable")]:
        x1, y1, x2, y2 = (float(v) for v in box_array[i])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        box_color = color if color is not None else color_for_label(int(label_array[i]))
        draw.rectangle((x1, y1, x2, y2), outline=box_color, width=width)
        text = f"{_class_name(int(label_array[i]), class_names)} {score_array[i]:.2f}"
        _draw_tag(draw, text, (x1, y1), box_color, font, canvas.size, above=True)
    return canvas


def _dashed_line(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    end: tuple[float, float],
    color: Color,
    width: int,
    dash: float,
) -> None:
    """Dashes of length ``dash`` with gaps of the same length from ``start`` to ``end``."""
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    if length == 0:
        return
    ux, uy = (end[0] - start[0]) / length, (end[1] - start[1]) / length
    position = 0.0
    while position < length:
        stop = min(position + dash, length)
        draw.line(
            (start[0] + ux * position, start[1] + uy * position,
             start[0] + ux * stop, start[1] + uy * stop),
            fill=color, width=width,
        )
        position += 2 * dash


def draw_ground_truth(
    image: Image.Image,
    boxes: Any,
    labels: Any = None,
    class_names: ClassNames | None = None,
    *,
    color: Color | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Draw ground-truth boxes as dashed outlines, tagged with the class name below the box.

    Dashed lines and bottom tags keep them apart from :func:`draw_detections`' solid lines
    and top tags, so ``draw_detections(draw_ground_truth(img, gt, ...), ...)`` shows both.

    Args:
        image: the picture the boxes belong to.
        boxes: ``[N, 4]`` xyxy in image pixels.
        labels: ``[N]`` class indices, or ``None`` for untagged boxes.
        class_names: names by label (a sequence or a mapping).
        color: one colour for every box; default is the class colour (white without labels).
        line_width: outline width in pixels; default scales with the image.
        font_size: tag text size in pixels; default scales with the image.

    Returns:
        A new RGB image of the same size.
    """
    box_array = _as_boxes(boxes)
    n = len(box_array)
    label_array = (
        None if labels is None else _check_length(_as_numpy(labels, np.int64), n, "labels")
    )
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width = line_width if line_width is not None else default_line_width(canvas.size)
    font = _font(font_size if font_size is not None else default_font_size(canvas.size))
    dash = float(max(4, 4 * width))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in box_array[i])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        if color is not None:
            box_color = color
        elif label_array is not None:
            box_color = color_for_label(int(label_array[i]))
        else:
            box_color = (255, 255, 255)
        corners = ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
        for k in range(4):
            _dashed_line(draw, corners[k], corners[(k + 1) % 4], box_color, width, dash)
        if label_array is not None:
            text = _class_name(int(label_array[i]), class_names)
            _draw_tag(draw, text, (x1, y2), box_color, font, canvas.size, above=False)
    return canvas


def make_grid(
    images: Sequence[Image.Image],
    cols: int,
    *,
    cell_size: tuple[int, int] | None = None,
    padding: int = 4,
    background: Color = (0, 0, 0),
) -> Image.Image:
    """Tile images row by row into one picture.

    Every cell is as large as the largest image (or ``cell_size = (W, H)``, into which each
    image is shrunk keeping its aspect ratio); images sit centred in their cells.

    Args:
        images: the pictures, in reading order.
        cols: images per row (fewer when there are fewer images).
        cell_size: optional ``(W, H)`` of every cell.
        padding: pixels between cells and around the border.
        background: colour of the padding and empty space.

    Returns:
        An RGB image of ``cols`` columns and ``ceil(len(images) / cols)`` rows.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    tiles = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
    if cell_size is not None:
        shrunk = []
        for tile in tiles:
            tile = tile.copy()
            tile.thumbnail(cell_size, Image.Resampling.BILINEAR)
            shrunk.append(tile)
        tiles = shrunk
        cell_w, cell_h = cell_size
    else:
        cell_w = max(t.width for t in tiles)
        cell_h = max(t.height for t in tiles)
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new(
        "RGB",
        (cols * cell_w + (cols + 1) * padding, rows * cell_h + (rows + 1) * padding),
        background,
    )
    for i, tile in enumerate(tiles):
        row, col = divmod(i, cols)
        x = padding + col * (cell_w + padding) + (cell_w - tile.width) // 2
        y = padding + row * (cell_h + padding) + (cell_h - tile.height) // 2
        grid.paste(tile, (x, y))
    return grid


def add_legend(
    image: Image.Image,
    entries: Sequence[tuple[str, Color, bool]],
    *,
    font_size: int = 14,
    background: Color = (0, 0, 0),
) -> Image.Image:
    """A copy of ``image`` with a legend strip above it.

    Args:
        image: the picture (usually a grid).
        entries: ``(text, colour, dashed)`` per item, left to right: a short line sample in
            the colour (dashed like ground truth or solid like predictions), then the text.
        font_size: text height in pixels.
        background: colour of the strip.

    Returns:
        A new RGB image, as wide as ``image`` (or as the legend if that is wider), with the
        strip on top.
    """
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, font_size // 2)
    sample = 3 * font_size
    widths: list[int] = []
    for text, _, _ in entries:
        left, _, right, _ = probe.textbbox((0, 0), text, font=font)
        widths.append(sample + pad + math.ceil(right - left))
    legend_w = sum(widths) + pad * (2 * len(entries) + 1)
    height = font_size + 2 * pad
    canvas = Image.new("RGB", (max(image.width, legend_w), image.height + height), background)
    canvas.paste(image.convert("RGB"), (0, height))
    draw = ImageDraw.Draw(canvas)
    x = float(pad)
    middle = height / 2
    line = max(2, font_size // 6)
    for (text, color, dashed), width in zip(entries, widths, strict=True):
        if dashed:
            _dashed_line(draw, (x, middle), (x + sample, middle), color, line, float(font_size // 2))
        else:
            draw.line((x, middle, x + sample, middle), fill=color, width=line)
        left, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text(
            (x + sample + pad - left, middle - (bottom - top) / 2 - top), text,
            fill=_text_color(background), font=font,
        )
        x += width + 2 * pad
    return canvas
