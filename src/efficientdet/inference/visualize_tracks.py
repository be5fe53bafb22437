"""Pictures of tracked objects: each track id in its own stable colour with a short trail,
and the count lines and zones with their counts.

:class:`Trails` remembers the last few anchors (box centres) of every track of a sequence;
:func:`draw_tracks` draws a frame's tracked boxes, tagged ``"#<id> <class> <score>"``, in the
colour of their id (:func:`color_for_track`, the same for an id in every frame), over their
trails; :func:`draw_counts` draws the lines (with their ``in`` / ``out`` totals) and zones
(with the objects inside). Detections without a track id are not drawn: what shows is what
the tracker follows, as in ultralytics' ``track`` mode.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

from .counting import CountLine, Zone, anchors
from .tracking import NO_TRACK
from .visualize import (
    PALETTE,
    ClassNames,
    Color,
    _class_name,
    _draw_tag,
    _font,
    default_font_size,
    default_line_width,
)

__all__ = ["DEFAULT_TRAIL", "Trails", "color_for_track", "draw_counts", "draw_tracks"]

DEFAULT_TRAIL = 30  # anchors kept per track: a second of motion at 30 fps
_LINE_COLOR: Color = (255, 255, 255)
_ZONE_COLOR: Color = (255, 225, 25)
_GOLDEN = 7  # palette step between consecutive ids: neighbours get far-apart colours


def color_for_track(track_id: int) -> Color:
    """The colour of track ``track_id``, the same in every frame (cycles after 20 ids)."""
    return PALETTE[(int(track_id) * _GOLDEN) % len(PALETTE)]


class Trails:
    """The last ``length`` anchors of each track of the current sequence.

    Args:
        length: anchors kept per track (0: no trails).
    """

    def __init__(self, length: int = DEFAULT_TRAIL) -> None:
        if length < 0:
            raise ValueError(f"trail length must be >= 0, got {length}")
        self.length = length
        self._points: dict[int, deque[tuple[float, float]]] = {}

    def reset(self) -> None:
        self._points.clear()

    def update(self, boxes: Tensor, track_ids: Tensor) -> None:
        """Add this frame's anchors; tracks not seen in it keep their trail until it is
        out of date by ``length`` frames of their own (they fade when the track ends)."""
        if self.length == 0:
            return
        seen = set()
        for track_id, point in zip(track_ids.tolist(), anchors(boxes), strict=True):
            if track_id == NO_TRACK:
                continue
            seen.add(track_id)
            self._points.setdefault(track_id, deque(maxlen=self.length)).append(point)
        for track_id in list(self._points):
            if track_id not in seen:
                trail = self._points[track_id]
                trail.popleft()
                if not trail:
                    del self._points[track_id]

    def items(self) -> list[tuple[int, list[tuple[float, float]]]]:
        return [(track_id, list(points)) for track_id, points in self._points.items()]


def draw_tracks(
    image: Image.Image,
    detection: Mapping[str, Tensor],
    trails: Trails | None = None,
    class_names: ClassNames | None = None,
) -> Image.Image:
    """Draw the tracked boxes of a frame over their trails.

    Args:
        image: the frame (drawn on an RGB copy).
        detection: ``{"boxes": Tensor[K, 4] xyxy, "scores": Tensor[K], "labels": Tensor[K],
            "track_ids": Tensor[K]}``; boxes whose id is ``NO_TRACK`` are left out.
        trails: the sequence's trails, updated with this frame by the caller.
        class_names: names by label for the tags.

    Returns:
        A new RGB image of the same size.
    """
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width = default_line_width(canvas.size)
    font = _font(default_font_size(canvas.size))
    draw = ImageDraw.Draw(canvas)
    for track_id, points in trails.items() if trails is not None else []:
        if len(points) > 1:
            draw.line(points, fill=color_for_track(track_id), width=width, joint="curve")
    rows = zip(
        detection["boxes"].tolist(), detection["scores"].tolist(), detection["labels"].tolist(),
        detection["track_ids"].tolist(), strict=True,
    )
    for (x1, y1, x2, y2), score, label, track_id in sorted(rows, key=lambda row: row[1]):
        if track_id == NO_TRACK:
            continue
        color = color_for_track(track_id)
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=width)
        text = f"#{track_id} {_class_name(int(label), class_names)} {score:.2f}"
        _draw_tag(draw, text, (x1, y1), color, font, canvas.size, above=True)
    return canvas


def draw_counts(
    image: Image.Image,
    lines: Sequence[CountLine],
    zones: Sequence[Zone],
    counts: Mapping[str, Any] | None,
) -> Image.Image:
    """Draw the count lines with their totals (``in N out M`` at the line's start) and the
    zones with the objects inside (at their first corner), in place on ``image``.

    Args:
        image: an RGB frame, drawn on.
        lines, zones: what is counted.
        counts: the frame's counts, as :meth:`Counter.update` gives them (None: no totals).

    Returns:
        ``image``.
    """
    draw = ImageDraw.Draw(image)
    width = max(2, default_line_width(image.size))
    font = _font(default_font_size(image.size))
    for k, zone in enumerate(zones):
        draw.polygon(list(zone.corners), outline=_ZONE_COLOR, width=width)
        if counts is not None:
            text = f"zone {k + 1}: {counts['zones'][k]['count']}"
            _draw_tag(draw, text, zone.corners[0], _ZONE_COLOR, font, image.size, above=False)
    for k, line in enumerate(lines):
        draw.line((line.start, line.end), fill=_LINE_COLOR, width=width)
        if counts is not None:
            totals = counts["lines"][k]
            text = f"in {totals['in']} out {totals['out']}"
            _draw_tag(draw, text, line.start, _LINE_COLOR, font, image.size, above=True)
    return image
