"""The server's limits, checked before the work they would cost: concurrency, the pixel queue
(from the image header, before the body is all in), the body deadline, the header size; and
the batcher's own guarantees (timeouts as on Python 3.10, every future resolved at stop)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from efficientdet.deploy.backends import Predictor  # noqa: E402
from efficientdet.deploy.batcher import Batcher, ShuttingDown  # noqa: E402
from efficientdet.deploy.limits import Gate, Limits, Refusal  # noqa: E402
from efficientdet.deploy.server import ServerConfig, create_app  # noqa: E402
from serving import (  # noqa: E402
    LiveServer,
    closed_by_server,
    png,
    read_response,
    start_request,
    tiny_checkpoint,
    tiny_predictor,
)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return tiny_predictor(tiny_checkpoint(tmp_path_factory.mktemp("weights")))


def _wide_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_concurrency_limit_refuses_before_the_body_is_read(predictor):
    limits = Limits(max_concurrency=2, body_timeout_s=20)
    app = create_app(predictor, ServerConfig(limits=limits, warmup=False))
    body = png()
    with LiveServer(app) as url:
        # Two requests that have sent their headers and half their body hold both places.
        held = [start_request(url, "/predict?name=a.png", {"Content-Length": str(len(body))},
                              body[: len(body) // 2]) for _ in range(2)]
        _wait_for(lambda: _metric(url, "efficientdet_in_flight_requests") == 2)
        third = start_request(url, "/predict", {"Content-Length": str(len(body))})
        status, headers, answer = read_response(third)
        assert status == 503 and headers["retry-after"] == "1"
        assert b"2 requests are already in progress (limit 2)" in answer
        assert headers["connection"] == "close" and closed_by_server(third)
        for sock in held:  # the admitted ones still finish
            sock.sendall(body[len(body) // 2:])
            assert read_response(sock)[0] == 200
            sock.close()
        assert httpx.post(f"{url}/predict", content=body).status_code == 200


def test_pixel_queue_is_charged_from_the_image_header(predictor):
    # Room for one 1000x1000 image at a time; the first one is held mid-body.
    limits = Limits(max_pixels=1_000_000, max_queue_pixels=1_500_000, body_timeout_s=20)
    app = create_app(predictor, ServerConfig(limits=limits, warmup=False))
    big = _wide_png(1000, 1000)
    with LiveServer(app) as url:
        first = start_request(url, "/predict?name=first.png",
                              {"Content-Length": str(len(big))}, big[:200])
        _wait_for(lambda: _metric(url, "efficientdet_queue_pixels") == 1_000_000)
        # Only the PNG header of the second is sent: refused from it, the rest never read.
        second = start_request(url, "/predict?name=second.png",
                               {"Content-Length": str(len(big))}, big[:200])
        status, headers, answer = read_response(second)
        assert status == 503 and headers["retry-after"] == "1"
        assert b"second.png: 1000000 pixels are already waiting" in answer
        assert closed_by_server(second)
        # A multipart upload is read the same way: its file part's header is enough.
        boundary = "XyZ"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"third.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        third = start_request(url, "/predict", {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + len(big) + 40)}, head + big[:200])
        status, _, answer = read_response(third)
        assert status == 503 and b"third.png: 1000000 pixels are already waiting" in answer
        first.sendall(big[200:])
        assert read_response(first)[0] == 200
        first.close()
        # Too many pixels for any request: 413 from the header alone.
        huge = _wide_png(1200, 1000)
        sock = start_request(url, "/predict?name=huge.png",
                             {"Content-Length": str(len(huge))}, huge[:100])
        status, _, answer = read_response(sock)
        assert status == 413
        assert b"huge.png: image is 1200x1000 = 1200000 pixels, above the limit of 1000000" in answer
        assert _metric(url, "efficientdet_queue_pixels") == 0


def test_declared_size_above_the_limit_gets_413_at_once(predictor):
    app = create_app(predictor, ServerConfig(limits=Limits(max_upload_bytes=1000), warmup=False))
    with LiveServer(app) as url:
        sock = start_request(url, "/predict", {"Content-Length": "5000000"})
        status, headers, answer = read_response(sock, timeout=5)
        assert status == 413 and b"upload of 5000000 bytes is above the limit of 1000 bytes" in answer
        assert closed_by_server(sock)


def test_slow_body_gets_408_at_the_deadline_and_is_disconnected(predictor):
    app = create_app(predictor, ServerConfig(limits=Limits(body_timeout_s=0.5), warmup=False))
    with LiveServer(app) as url:
        started = time.monotonic()
        sock = start_request(url, "/predict", {"Content-Length": "1000"}, b"\x89PNG")
        for _ in range(3):  # a byte every 0.2 s: alive, but too slow
            time.sleep(0.2)
            try:
                sock.sendall(b"x")
            except OSError:
                break
        status, headers, answer = read_response(sock, timeout=5)
        waited = time.monotonic() - started
        assert status == 408 and b"did not arrive within the limit of 0.5 s" in answer
        assert 0.5 <= waited < 3.0
        assert headers["connection"] == "close" and closed_by_server(sock)
        assert httpx.get(f"{url}/health").status_code == 200


def test_oversized_headers_are_refused(predictor):
    app = create_app(predictor, ServerConfig(warmup=False))
    with LiveServer(app, max_header_bytes=4096) as url:
        sock = start_request(url, "/predict", {"X-Padding": "a" * 8000, "Content-Length": "0"})
        assert read_response(sock)[0] == 400
        fine = httpx.post(f"{url}/predict", content=png(), headers={"X-Padding": "a" * 2000})
        assert fine.status_code == 200


def test_gate_counts_places_and_pixels_and_drains():
    async def scenario() -> None:
        gate = Gate(Limits(max_concurrency=2, max_pixels=100, max_queue_pixels=150))
        with gate.admit() as one:
            one.charge_pixels("a", 10, 10)
            with gate.admit() as two:
                with pytest.raises(Refusal) as busy, gate.admit():
                    pass
                assert busy.value.status == 503 and busy.value.reason == "busy"
                with pytest.raises(Refusal) as full:
                    two.charge_pixels("b", 10, 6)
                assert full.value.reason == "queue_full" and gate.pixels == 100
                two.charge_pixels("b", 5, 10)
                assert gate.pixels == 150
            assert gate.in_flight == 1 and gate.pixels == 100
            # Draining: new requests are refused; this one is cut after the grace period.
            blocked = asyncio.Event()
            guarded = asyncio.ensure_future(gate.guard(blocked.wait()))
            drained = asyncio.ensure_future(gate.drain(0.2))
            await asyncio.sleep(0.05)
            with pytest.raises(Refusal) as draining, gate.admit():
                pass
            assert draining.value.reason == "draining"
            with pytest.raises(Refusal) as cut:
                await guarded
            assert cut.value.status == 503 and cut.value.reason == "grace_exceeded"
        assert await drained == 1 and gate.in_flight == 0 and gate.pixels == 0

    asyncio.run(scenario())


def test_batch_wait_times_out_as_on_python_310(predictor, monkeypatch):
    # Before 3.11, asyncio.wait_for raises asyncio.TimeoutError, which is not the builtin
    # TimeoutError: the worker must catch that one and go on batching.
    class Py310TimeoutError(Exception):
        pass

    real_wait_for = asyncio.wait_for

    async def wait_for_310(awaitable, timeout):
        try:
            return await real_wait_for(awaitable, timeout)
        except TimeoutError:
            raise Py310TimeoutError() from None

    monkeypatch.setattr(asyncio, "TimeoutError", Py310TimeoutError)
    monkeypatch.setattr(asyncio, "wait_for", wait_for_310)
    image = Image.new("RGB", (32, 32))

    async def scenario() -> list[int]:
        batcher = Batcher(predictor.predict_fn, max_batch=4, batch_wait_ms=20)
        batcher.start()
        sizes = []
        for _ in range(3):  # each waits out the batch window alone
            sizes.append((await real_wait_for(batcher.predict(image), 5))["batch_size"])
        await batcher.stop()
        return sizes

    assert asyncio.run(scenario()) == [1, 1, 1]


def test_batcher_stop_resolves_every_waiting_future(predictor):
    release = threading.Event()

    def predict_fn(images):
        release.wait(10)
        return predictor.predict_fn(images)

    image = Image.new("RGB", (32, 32))

    async def scenario() -> list[BaseException | None]:
        batcher = Batcher(predict_fn, max_batch=1, batch_wait_ms=0)
        batcher.start()
        futures = [asyncio.ensure_future(batcher.predict(image)) for _ in range(3)]
        while batcher.queued > 1:  # the first is in the detector, two wait in the queue
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await batcher.stop()
        release.set()
        done, pending = await asyncio.wait(futures, timeout=5)
        assert not pending
        return [f.exception() for f in futures]

    errors = asyncio.run(scenario())
    assert all(isinstance(e, ShuttingDown) for e in errors), errors


def test_queue_refusals_are_counted_by_reason(predictor):
    limits = Limits(max_upload_bytes=1000)
    with LiveServer(create_app(predictor, ServerConfig(limits=limits, warmup=False))) as url:
        assert httpx.post(f"{url}/predict", content=b"x" * 2000).status_code == 413
        assert httpx.post(f"{url}/predict", content=b"not an image").status_code == 400
        text = httpx.get(f"{url}/metrics").text
    assert 'efficientdet_refusals_total{reason="too_large"} 1.0' in text
    assert 'efficientdet_refusals_total{reason="not_an_image"} 1.0' in text


def test_limits_reject_inconsistent_settings():
    with pytest.raises(ValueError, match="max_queue_pixels .* must be at least max_pixels"):
        Limits(max_pixels=100, max_queue_pixels=50)
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        Limits(body_timeout_s=0)
