"""Generated clips for the tracking tests: coloured squares moving on grey, and a detector
that finds them by colour (so what it sees went through the video encoder and decoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS = ((220, 30, 30), (30, 30, 220), (30, 200, 30))  # label 0, 1, 2
SIZE = (160, 120)  # (W, H)
SIDE = 20


def square_positions(frame: int) -> dict[int, tuple[int, int]]:
    """Top-left corner of each square in ``frame`` (0..29): red goes right along y=40, blue
    left along y=70 (they pass each other at frame ~15), green comes in at the top at frame
    10 and leaves at the bottom at frame ~26."""
    found = {0: (10 + 4 * frame, 40), 1: (130 - 4 * frame, 70)}
    if frame >= 10:
        y = -SIDE + 9 * (frame - 10)
        if y < SIZE[1]:
            found[2] = (70, y)
    return found


def clip_frame(frame: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` frame ``frame`` of the clip."""
    width, height = SIZE
    pixels = np.full((height, width, 3), 128, np.uint8)
    for label, (x, y) in square_positions(frame).items():
        pixels[max(0, y):max(0, y + SIDE), max(0, x):max(0, x + SIDE)] = COLOURS[label]
    return pixels


def write_clip(av, path: Path, frames: int = 30, rate: int = 25) -> None:
    """The clip's first ``frames`` frames as an MPEG-4 video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(clip_frame(i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def colour_detector(images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
    """Per image, the box of the pixels close to each square's colour (label = colour),
    score 0.9; squares only partly in view give the box of what shows."""
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB")).astype(np.int32)
        boxes, labels = [], []
        for label, colour in enumerate(COLOURS):
            ys, xs = np.nonzero(np.abs(pixels - np.array(colour)).sum(axis=2) < 90)
            if len(xs) >= 20:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(label)
        out.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.full((len(boxes),), 0.9),
            "labels": torch.tensor(labels, dtype=torch.int64),
        })
    return out
