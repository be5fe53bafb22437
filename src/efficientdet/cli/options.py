"""Options shared by several commands, parsed and checked the same way everywhere."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a positive integer, refused with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_image_size(parser: argparse.ArgumentParser, help_text: str = "H [W] of the network input") -> None:
    """``--image-size H [W]``: positive sides, read back with :func:`image_size`."""
    parser.add_argument("--image-size", type=positive_int, nargs="+", metavar="SIDE", help=help_text)


def image_size(value: list[int] | None) -> tuple[int, int] | None:
    """``(H, W)`` from ``--image-size`` (one side means a square), or None when not given."""
    if not value:
        return None
    if len(value) > 2:
        raise ValueError(f"--image-size takes H or H W, got {len(value)} values")
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
