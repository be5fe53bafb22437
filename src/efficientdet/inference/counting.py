"""Counting tracked objects: crossings of a line, by direction, and objects inside a zone.

Both go by each object's anchor, the centre of its box, and by its track id
(:mod:`~efficientdet.inference.tracking`):

* :class:`CountLine` counts a crossing when the anchor of one track moves, from one frame
  where the track is seen to the next, from one side of the line segment to the other
  through the segment itself. A track crossing one way and back counts once each way. The
  directions: looking along the line from ``(x1, y1)`` to ``(x2, y2)`` in image coordinates
  (y down), ``"in"`` is a crossing from its left to its right; for a line drawn from left
  to right, ``"in"`` is downward and ``"out"`` upward.
* :class:`Zone` counts the tracked objects whose anchor lies inside a polygon, per frame.

:class:`Counter` holds the lines and zones of one sequence and the side of the line each
track was last seen on; :meth:`Counter.update` gives the counts a frame's record carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .tracking import NO_TRACK

__all__ = ["CountLine", "Counter", "Zone", "parse_line", "parse_zone"]

Point = tuple[float, float]
IN, OUT = "in", "out"


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected numbers separated by commas") from None


def parse_line(text: str) -> CountLine:
    """``"x1,y1,x2,y2"`` (image pixels) -> :class:`CountLine`; anything else raises."""
    values = _numbers(text, "count line")
    if len(values) != 4:
        raise ValueError(f"count line {text!r}: expected x1,y1,x2,y2 (4 numbers), got {len(values)}")
    return CountLine((values[0], values[1]), (values[2], values[3]))


def parse_zone(text: str) -> Zone:
    """``"x1,y1,x2,y2,x3,y3[,...]"`` (a polygon's corners in order, image pixels) ->
    :class:`Zone`; anything else raises."""
    values = _numbers(text, "zone")
    if len(values) < 6 or len(values) % 2:
        raise ValueError(
            f"zone {text!r}: expected x1,y1,x2,y2,x3,y3,... (3 corners or more), got "
            f"{len(values)} numbers"
        )
    return Zone(tuple((values[i], values[i + 1]) for i in range(0, len(values), 2)))


def _cross(origin: Point, direction: Point, point: Point) -> float:
    """z of ``direction x (point - origin)``: > 0 right of the direction in image
    coordinates (y down), < 0 left of it, 0 on the line."""
    return direction[0] * (point[1] - origin[1]) - direction[1] * (point[0] - origin[0])


@dataclass(frozen=True)
class CountLine:
    """A line segment from ``start`` to ``end`` (image pixels) that tracks are counted
    crossing."""

    start: Point
    end: Point

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"count line from {self.start} to {self.end} has no length")

    def side(self, point: Point) -> int:
        """+1 right of the line (seen from ``start`` to ``end``, y down), -1 left, 0 on it."""
        value = _cross(self.start, self._direction, point)
        return (value > 0) - (value < 0)

    @property
    def _direction(self) -> Point:
        return (self.end[0] - self.start[0], self.end[1] - self.start[1])

    def crossed(self, before: Point, after: Point) -> bool:
        """Whether the move ``before -> after`` passes through the segment (its ends
        included)."""
        move = (after[0] - before[0], after[1] - before[1])
        a, b = _cross(before, move, self.start), _cross(before, move, self.end)
        return a * b <= 0 and (a != 0 or b != 0)


@dataclass(frozen=True)
class Zone:
    """A polygon (corners in order, image pixels) whose tracked objects are counted."""

    corners: tuple[Point, ...]

    def __post_init__(self) -> None:
        if len(self.corners) < 3:
            raise ValueError(f"a zone needs 3 corners or more, got {len(self.corners)}")

    def contains(self, point: Point) -> bool:
        """Whether ``point`` is inside (even-odd rule: a ray to the right crosses the edges
        an odd number of times)."""
        x, y = point
        inside = False
        corners = self.corners
        for (x1, y1), (x2, y2) in zip(corners, corners[1:] + corners[:1], strict=True):
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


def anchors(boxes: Tensor) -> list[Point]:
    """Centres of ``Tensor[K, 4]`` xyxy boxes."""
    return [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in boxes.tolist()]


@dataclass
class _LineState:
    totals: dict[str, int] = field(default_factory=lambda: {IN: 0, OUT: 0})
    last: dict[int, tuple[Point, int]] = field(default_factory=dict)  # id -> (anchor, side)


class Counter:
    """The counts of one sequence: crossings of each line (totals so far) and objects inside
    each zone (this frame).

    Args:
        lines: the lines to count crossings of.
        zones: the zones to count objects in.
    """

    def __init__(self, lines: Sequence[CountLine] = (), zones: Sequence[Zone] = ()) -> None:
        self.lines = tuple(lines)
        self.zones = tuple(zones)
        self._states = [_LineState() for _ in self.lines]

    def __bool__(self) -> bool:
        return bool(self.lines or self.zones)

    def reset(self) -> None:
        """Totals to 0 and every track forgotten (a new sequence starts)."""
        self._states = [_LineState() for _ in self.lines]

    @property
    def totals(self) -> list[dict[str, int]]:
        """``{"in": n, "out": m}`` per line: the crossings so far."""
        return [dict(state.totals) for state in self._states]

    def update(self, boxes: Tensor, track_ids: Tensor) -> dict[str, Any]:
        """Count one frame.

        Args:
            boxes: ``Tensor[K, 4]`` xyxy of the frame's detections.
            track_ids: ``Tensor[K]``, :data:`~efficientdet.inference.tracking.NO_TRACK` for
                untracked ones (not counted).

        Returns:
            ``{"lines": [{"in": total, "out": total, "crossed": [[track_id, "in" | "out"],
            ...]}, ...], "zones": [{"count": n, "track_ids": [...]}, ...]}``: per line the
            totals so far and this frame's crossings, per zone the tracked objects inside.
        """
        tracked = [
            (int(i), point) for i, point in zip(track_ids.tolist(), anchors(boxes), strict=True)
            if i != NO_TRACK
        ]
        lines = [self._cross(line, state, tracked) for line, state in zip(self.lines, self._states, strict=True)]
        zones = []
        for zone in self.zones:
            inside = sorted(i for i, point in tracked if zone.contains(point))
            zones.append({"count": len(inside), "track_ids": inside})
        return {"lines": lines, "zones": zones}

    @staticmethod
    def _cross(line: CountLine, state: _LineState, tracked: list[tuple[int, Point]]) -> dict[str, Any]:
        crossed: list[list[Any]] = []
        for track_id, point in sorted(tracked):
            side = line.side(point)
            previous = state.last.get(track_id)
            if side == 0:  # on the line: keep the side it came from
                state.last[track_id] = (point, previous[1] if previous else 0)
                continue
            if previous is not None and previous[1] not in (0, side) and line.crossed(previous[0], point):
                direction = IN if side > 0 else OUT
                state.totals[direction] += 1
                crossed.append([track_id, direction])
            state.last[track_id] = (point, side)
        return {IN: state.totals[IN], OUT: state.totals[OUT], "crossed": crossed}
