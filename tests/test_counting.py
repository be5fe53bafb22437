"""Counting by track id: line crossings by direction and objects inside zones, on hand-made
tracks whose counts are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from efficientdet.inference.counting import Counter, CountLine, Zone, parse_line, parse_zone


def _frame(*objects: tuple[int, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes, track ids) of 10 x 10 boxes centred on (x, y) per (track id, x, y)."""
    boxes = torch.tensor([[x - 5, y - 5, x + 5, y + 5] for _, x, y in objects], dtype=torch.float32)
    return boxes.reshape(-1, 4), torch.tensor([i for i, _, _ in objects], dtype=torch.int64)


def test_a_track_crossing_one_way_and_back_counts_once_each_way():
    # A horizontal line drawn left to right at y = 50: "in" is downward.
    counter = Counter([parse_line("0,50,100,50")])
    path = [30, 40, 60, 70, 45, 20]  # track 7's centre y: down through the line, then back up
    seen = []
    for y in path:
        counts = counter.update(*_frame((7, 50, y)))
        line = counts["lines"][0]
        seen.append((line["in"], line["out"], line["crossed"]))
    assert seen == [
        (0, 0, []), (0, 0, []), (1, 0, [[7, "in"]]), (1, 0, []), (1, 1, [[7, "out"]]), (1, 1, []),
    ]


def test_crossings_count_per_track_and_only_through_the_segment():
    counter = Counter([CountLine((0, 50), (100, 50))])
    counter.update(*_frame((1, 20, 40), (2, 150, 40), (3, 80, 60)))
    # 1 crosses down through the segment; 2 passes beside its end (x = 150); 3 goes up.
    counts = counter.update(*_frame((1, 20, 60), (2, 150, 60), (3, 80, 40)))
    assert counts["lines"][0] == {"in": 1, "out": 1, "crossed": [[1, "in"], [3, "out"]]}
    # 2 goes back up to (90, 40): it meets y = 50 at x = 120, beside the segment again.
    assert counter.update(*_frame((2, 90, 40)))["lines"][0]["crossed"] == []
    # Down to (90, 60) and up to (30, 40), meeting y = 50 at x = 60: through the segment.
    counter.update(*_frame((2, 90, 60)))
    counts = counter.update(*_frame((2, 30, 40)))
    assert counts["lines"][0] == {"in": 2, "out": 2, "crossed": [[2, "out"]]}


def test_stopping_on_the_line_keeps_the_side_it_came_from_and_untracked_boxes_do_not_count():
    counter = Counter([parse_line("0,50,100,50")])
    for y in (40, 50, 50, 60):  # down, resting on the line in between
        counts = counter.update(*_frame((4, 30, y), (-1, 30, 100 - y)))
    assert (counts["lines"][0]["in"], counts["lines"][0]["out"]) == (1, 0)
    counter.reset()
    assert counter.totals == [{"in": 0, "out": 0}]


def test_direction_follows_the_way_the_line_is_drawn():
    # The same move (downward) across the same line drawn right to left is "out".
    counter = Counter([parse_line("100,50,0,50")])
    counter.update(*_frame((1, 50, 40)))
    assert counter.update(*_frame((1, 50, 60)))["lines"][0]["out"] == 1


def test_zone_counts_tracked_objects_inside_this_frame():
    triangle = parse_zone("0,0,100,0,0,100")  # x + y < 100 is inside
    counter = Counter(zones=[triangle, Zone(((200, 200), (300, 200), (300, 300), (200, 300)))])
    counts = counter.update(*_frame((1, 10, 10), (2, 60, 60), (3, 49, 49), (-1, 20, 20), (5, 250, 250)))
    assert counts["zones"] == [{"count": 2, "track_ids": [1, 3]}, {"count": 1, "track_ids": [5]}]
    assert counts["lines"] == []
    assert counter.update(*_frame())["zones"][0] == {"count": 0, "track_ids": []}


def test_parse_errors_are_one_clear_line():
    with pytest.raises(ValueError, match=r"count line '1,2,3': expected x1,y1,x2,y2 \(4 numbers\), got 3"):
        parse_line("1,2,3")
    with pytest.raises(ValueError, match="expected numbers separated by commas"):
        parse_line("a,b,c,d")
    with pytest.raises(ValueError, match="has no length"):
        parse_line("5,5,5,5")
    with pytest.raises(ValueError, match=r"3 corners or more\), got 4 numbers"):
        parse_zone("0,0,1,1")
    assert parse_zone(" 0, 0, 4, 0, 4, 4 ").corners == ((0, 0), (4, 0), (4, 4))
