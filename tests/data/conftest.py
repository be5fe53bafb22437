"""Shared helpers for the data tests: tiny images written with PIL into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

ImageWriter = Callable[..., Path]


def write_image(
    path: Path, width: int, height: int, color: tuple[int, int, int] = (90, 90, 90)
) -> Path:
    """A solid-colour RGB image of ``width x height``; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)
    return path


@pytest.fixture
def make_image() -> ImageWriter:
    """``make_image(path, width, height, color=...)`` writes a solid image and returns the path."""
    return write_image
