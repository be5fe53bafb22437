"""Tests for efficientdet.inference.reader: order kept, a bounded window, failures in their
place, threads ended; the per-image work (decode, letterbox)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.detection.transform import letterbox, load_image
from efficientdet.inference.reader import THREAD_NAME, ImageLoader, ReadAhead
from efficientdet.inference.sources import Input

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def _input(path: Path, index: int = 0) -> Input:
    return Input(index, path, "0" * 16)


def test_results_keep_the_input_order_when_loads_finish_out_of_order():
    finished: list[int] = []
    lock = threading.Lock()
    third_done = threading.Event()

    def load(i: int) -> int:
        if i == 0:  # the first item waits until the third one is finished
            assert third_done.wait(timeout=10)
        with lock:
            finished.append(i)
        if i == 2:
            third_done.set()
        return i * 10

    with ReadAhead(load, workers=2, window=4) as reader:
        results = list(reader.map(range(6)))
    assert results == [0, 10, 20, 30, 40, 50]
    assert finished.index(2) < finished.index(0)  # they did finish out of order


def test_the_window_bounds_what_is_read_ahead_and_workers_bound_concurrency():
    window, workers, count = 3, 2, 8
    started = 0
    running = most_running = 0
    lock = threading.Lock()
    both_first = threading.Barrier(workers, timeout=10)  # breaks unless two loads overlap

    def load(i: int) -> int:
        nonlocal started, running, most_running
        with lock:
            started += 1
            running += 1
            most_running = max(most_running, running)
        if i < workers:
            both_first.wait()
        with lock:
            running -= 1
        return i

    def started_after_a_while(expected: int) -> int:
        deadline = time.monotonic() + 10
        while started < expected and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.02)  # time to start more, were more submitted
        return started

    seen = []
    with ReadAhead(load, workers=workers, window=window) as reader:
        for k, i in enumerate(reader.map(range(count))):
            # Item k comes out once items 0..k+window-1 are submitted, and no more.
            seen.append((i, started_after_a_while(min(k + window, count))))
    assert seen == [(k, min(k + window, count)) for k in range(count)]
    assert most_running == workers


def test_a_failing_load_comes_out_in_its_place_and_the_threads_end():
    def load(i: int) -> int:
        if i == 2:
            raise RuntimeError("load 2 broke")
        return i

    got = []
    with (
        pytest.raises(RuntimeError, match="load 2 broke"),
        ReadAhead(load, workers=2, window=4) as reader,
    ):
        for value in reader.map(range(10)):
            got.append(value)
    assert got == [0, 1]
    assert _reader_threads() == []


def test_an_error_of_the_items_themselves_comes_after_the_items_before_it():
    def items():
        yield from (1, 2, 3)
        raise ValueError("the inputs changed")

    got = []
    with (
        pytest.raises(ValueError, match="inputs changed"),
        ReadAhead(lambda i: -i, workers=2, window=8) as reader,
    ):
        for value in reader.map(items()):
            got.append(value)
    assert got == [-1, -2, -3]


def test_keyboard_interrupt_in_the_consumer_cancels_the_rest_and_ends_the_threads():
    started: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.01)
        return i

    with pytest.raises(KeyboardInterrupt), ReadAhead(load, workers=2, window=4) as reader:
        for value in reader.map(range(1000)):
            if value == 1:
                raise KeyboardInterrupt
    assert _reader_threads() == []
    # Item 1 came out after items 0..4 were submitted; nothing later was started.
    assert sorted(started) == list(range(len(started))) and len(started) <= 5


def test_map_needs_the_reader_open_and_sizes_are_checked():
    reader = ReadAhead(lambda i: i, workers=1, window=1)
    with pytest.raises(RuntimeError, match="with ReadAhead"):
        next(reader.map([1]))
    with pytest.raises(ValueError, match="at least 1"):
        ReadAhead(lambda i: i, workers=0, window=1)


def test_image_loader_letterboxes_as_the_transform_does(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (30, 80, 3), dtype=np.uint8)).save(path)
    decoded = ImageLoader(((64, 64), MEAN, STD))(_input(path))
    want, info = letterbox(load_image(path), (64, 64), MEAN, STD)
    assert decoded.error is None and decoded.size == (80, 30)
    assert decoded.pixels is not None and torch.equal(decoded.pixels, want)
    assert decoded.info == info and info.scale == pytest.approx(0.8)  # min(64/30, 64/80)
    assert decoded.image is not None and decoded.image.size == (80, 30)

    slim = ImageLoader(((64, 64), MEAN, STD), keep_image=False)(_input(path))
    assert slim.image is None and slim.size == (80, 30) and slim.pixels is not None


def test_image_loader_gives_the_reason_a_file_cannot_be_read_and_skips_videos(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    decoded = ImageLoader(None)(_input(broken, 3))
    assert (decoded.input.index, decoded.error) == (3, "not an image (format not recognised)")
    assert decoded.image is None and decoded.pixels is None
    missing = ImageLoader(None)(_input(tmp_path / "gone.jpg"))
    assert missing.error == "no such file"
    video = ImageLoader(((64, 64), MEAN, STD))(_input(tmp_path / "clip.mp4"))
    assert video.is_video and video.error is None and video.image is None
