"""Live sources: the reader keeps the newest frame and counts what it drops, reconnects with
back-off, stops at its duration; a stream served by ffmpeg on the loopback is predicted with
drops and through a restart of the server; Ctrl-C ends a stream with the files complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet.inference import predict_stream as predict_stream_module
from efficientdet.inference.live import (
    LiveOptions,
    LiveReader,
    SourceEnded,
    is_stream,
    redact,
    scrub,
    stream_name,
)
from efficientdet.inference.predict import PREDICTIONS_FILE, RECORDS_FILE, run_prediction

FRAME = Image.new("RGB", (32, 24), (90, 90, 90))


def _as_image(frame: object) -> Image.Image:
    return FRAME


def test_what_is_a_live_source(tmp_path, monkeypatch):
    assert is_stream("rtsp://cam.local:554/live/ch1") and is_stream("HTTP://host/x.ts")
    assert is_stream("0") and is_stream("12")
    assert not is_stream("video.mp4") and not is_stream("file:///tmp/x.mp4")
    assert not is_stream(Path("0"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0").write_bytes(b"")
    assert not is_stream("0")  # a file of that name wins
    assert stream_name("rtsp://user:pw@cam.local:554/live/ch1.sdp") == "ch1"
    assert stream_name("http://127.0.0.1:8000/") == "127.0.0.1" and stream_name("0") == "camera0"
    assert redact("rtsp://user:pw@cam.local:554/live") == "rtsp://user:***@cam.local:554/live"
    assert redact("rtsp://cam.local/live") == "rtsp://cam.local/live"


def _paced(count: int, period: float, published: list[float]) -> Iterator[int]:
    for number in range(count):
        time.sleep(period)
        published.append(time.monotonic())
        yield number


def _once(frames: Iterator[int]):
    """A source that gives ``frames`` when first opened and refuses to open again."""
    opened = []

    def source() -> Iterator[int]:
        opened.append(True)
        if len(opened) > 1:
            raise ConnectionRefusedError("connection refused")
        return frames

    return source


def test_a_slow_consumer_takes_the_newest_frame_and_the_others_are_counted_dropped():
    taken = []
    with LiveReader(_once(_paced(60, 0.01, [])), _as_image,
                    LiveOptions(give_up_after=0.2, first_delay=0.05)) as reader:
        for frame in reader:
            # Nothing newer than this frame was published when it was handed out (one more
            # may have come while it was being handed over).
            assert reader.decoded - frame.number <= 2
            taken.append(frame)
            time.sleep(0.05)  # the detector: 5 frame periods per frame
    numbers = [f.number for f in taken]
    assert numbers == sorted(set(numbers)) and len(taken) < 30
    assert reader.decoded == 60 and reader.dropped >= 60 - len(taken) - 1
    assert [f.dropped for f in taken] == sorted(f.dropped for f in taken)
    assert reader.error is not None and "gave up" in reader.error


def test_a_dropped_stream_is_reopened_after_a_growing_wait_until_it_is_given_up():
    opened: list[float] = []
    dropped: list[float] = []

    def source() -> Iterator[int]:
        opened.append(time.monotonic())
        attempt = len(opened)
        try:
            if attempt not in (1, 4):
                raise ConnectionRefusedError("connection refused")
            yield from _paced(3, 0.02, [])  # slow enough for the consumer to take each
            if attempt == 1:
                raise OSError("connection reset")  # dropped after 3 frames; 4 ends the stream
        finally:
            dropped.append(time.monotonic())

    options = LiveOptions(first_delay=0.05, max_delay=0.2, give_up_after=0.6)
    with LiveReader(source, _as_image, options) as reader:
        frames = list(reader)
    waits = [again - drop for drop, again in zip(dropped, opened[1:], strict=False)]
    assert len(frames) == 6 and [f.number for f in frames] == list(range(6))
    # 0.05 s after the first drop, 0.1 and 0.2 after the refusals; frames reset the back-off
    assert waits[:4] == [
        pytest.approx(0.05, abs=0.04), pytest.approx(0.1, abs=0.04),
        pytest.approx(0.2, abs=0.06), pytest.approx(0.05, abs=0.04),
    ]
    assert reader.reconnects == len(opened) - 1 and reader.dropped == 0
    assert reader.error is not None and reader.error.startswith("open failed (connection refused)")
    assert reader.error.endswith("no frame for 0.6 s, gave up")


def test_the_password_of_a_stream_never_shows_in_its_messages(caplog):
    url = "rtsp://admin:s3cret@cam.local:554/live"

    def refused() -> Iterator[int]:
        raise ConnectionRefusedError(f"[Errno 111] Connection refused: '{url}'")  # as PyAV says it

    options = LiveOptions(first_delay=0.05, max_delay=0.05, give_up_after=0.2)
    with caplog.at_level("WARNING"), LiveReader(refused, _as_image, options, name=redact(url),
                                                source=url) as reader:
        assert list(reader) == []
    assert reader.error is not None and "rtsp://admin:***@cam.local:554/live" in reader.error
    assert "s3cret" not in reader.error and caplog.messages
    assert not any("s3cret" in message for message in caplog.messages)
    assert scrub("no password here", "rtsp://cam/live") == "no password here"
    assert scrub(f"bad 's3cret' in {url}", url) == "bad '***' in rtsp://admin:***@cam.local:554/live"


def test_a_source_with_a_duration_ends_instead_of_playing_again():
    opened = []

    def clip() -> Iterator[int]:  # a video file behind a URL: live_frames raises SourceEnded
        opened.append(1)
        yield from _paced(3, 0.02, [])
        raise SourceEnded

    with LiveReader(clip, _as_image, LiveOptions(first_delay=0.05)) as reader:
        frames = list(reader)
    assert len(frames) == 3 and len(opened) == 1
    assert reader.reconnects == 0 and reader.error is None


def _endless_stream_and_a_still(tmp_path: Path, monkeypatch) -> Path:
    """Every stream an endless 200 fps source of grey frames; a still image to come after it."""

    def fake_live_frames(av, source, options, on_open=None) -> Iterator[int]:
        yield from _paced(10**6, 0.005, [])

    monkeypatch.setattr(predict_stream_module, "live_frames", fake_live_frames)
    monkeypatch.setattr(predict_stream_module, "upright_frame", _as_image)
    still = tmp_path / "later.png"
    FRAME.save(still)
    return still


def test_resuming_keeps_the_records_of_a_stream_that_was_stopped(tmp_path, monkeypatch):
    still = _endless_stream_and_a_still(tmp_path, monkeypatch)
    sources = ["rtsp://cam/live", still]
    first = run_prediction(_detector(interrupt_at=5), sources, tmp_path / "out", progress=False)
    assert first.interrupted and first.frames == 4
    video = (tmp_path / "out" / "live.mp4").read_bytes()
    report = run_prediction(_detector(), sources, tmp_path / "out", progress=False, resume=True)
    assert report.ok and report.frames == 0 and report.streams == 0  # the stream is not read again
    records = [json.loads(line) for line in (tmp_path / "out" / RECORDS_FILE).open()]
    assert [r["file_name"] for r in records[:4]] == ["rtsp://cam/live"] * 4 and len(records) == 5
    assert records[4]["file_name"].endswith("later.png") and "frame" not in records[4]
    frames = [r["frame"] for r in records[:4]]
    assert frames == sorted(set(frames))
    assert (tmp_path / "out" / "live.mp4").read_bytes() == video  # its video is left as it was


def test_duration_ends_an_endless_source():
    start = time.monotonic()
    with LiveReader(lambda: _paced(10**6, 0.005, []), _as_image, LiveOptions(duration=0.3)) as reader:
        frames = list(reader)
    assert 0.25 < time.monotonic() - start < 1.5
    assert frames and all(f.time <= 0.3 for f in frames) and reader.error is None


def _detector(delay: float = 0.0, interrupt_at: int | None = None, terminate_at: int | None = None):
    calls = []

    def detect(images: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
        calls.append(len(images))
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        if terminate_at is not None and len(calls) == terminate_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a service manager stopping the process
        time.sleep(delay)
        return [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 16.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in images]

    return detect


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_stream_and_the_run_with_complete_files(tmp_path, monkeypatch, stop):
    still = _endless_stream_and_a_still(tmp_path, monkeypatch)
    detect = _detector(interrupt_at=5) if stop == "ctrl-c" else _detector(terminate_at=5)
    before = signal.getsignal(signal.SIGTERM)
    report = run_prediction(detect, ["rtsp://cam/live", still], tmp_path / "out", progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the stream's handler is gone again
    assert report.interrupted and report.streams == 1 and report.frames == 4
    assert report.images == 0  # the run ended with the stream
    records = [json.loads(line) for line in (tmp_path / "out" / RECORDS_FILE).open()]
    assert len(records) == 4 and all(r["file_name"] == "rtsp://cam/live" for r in records)
    assert [set(r) >= {"frame", "time", "dropped"} for r in records] == [True] * 4
    assert len(json.loads((tmp_path / "out" / PREDICTIONS_FILE).read_text())) == 4
    assert (tmp_path / "out" / "live.mp4").is_file()
    assert "stopped by Ctrl-C / SIGTERM" in report.summary()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, seconds: float) -> subprocess.Popen:
    """ffmpeg serving a 25 fps test pattern over HTTP (one client), in real time."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", "testsrc=size=96x64:rate=25", "-t", str(seconds), "-c:v", "mpeg1video",
         "-f", "mpegts", "-listen", "1", url],
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_a_local_http_stream_drops_frames_for_a_slow_detector_and_survives_a_restart(tmp_path):
    pytest.importorskip("av")
    url = f"http://127.0.0.1:{_free_port()}/live.ts"
    servers = [_serve(url, 20)]

    def restart() -> None:
        time.sleep(1.5)
        servers[0].kill()  # the stream drops mid-way
        servers[0].wait()
        time.sleep(0.3)
        servers.append(_serve(url, 20))

    restarter = threading.Thread(target=restart)
    try:
        time.sleep(0.3)
        restarter.start()
        report = run_prediction(
            _detector(delay=0.1), [url], tmp_path / "out", progress=False,
            live=LiveOptions(duration=4.0, first_delay=0.2, open_timeout=3, read_timeout=3),
        )
    finally:
        restarter.join()
        for server in servers:
            server.kill()
            server.wait()
    assert report.ok and report.streams == 1 and report.reconnects >= 1
    records = [json.loads(line) for line in (tmp_path / "out" / RECORDS_FILE).open()]
    frames = [r["frame"] for r in records]
    assert frames == sorted(set(frames)) and len(records) == report.frames
    assert report.dropped > 0 and records[-1]["dropped"] <= report.dropped
    # 4 s at 25 fps, at most ~10 frames/s taken: the rest was dropped, not queued.
    assert 10 <= len(records) <= 45 and records[-1]["time"] <= 4.0
    assert (tmp_path / "out" / "live.mp4").stat().st_size > 0
