"""``efficientdet serve`` as a real process on SIGTERM: ``/ready`` turns 503 at once, new
requests are refused, the request in progress is answered (or cut with 503 after
``--grace``), and the process exits with status 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from serving import png, read_response, start_request, start_serve_command, tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


def _in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("efficientdet_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def _held_request(url: str, body: bytes):
    """A ``/predict`` that has sent its headers and half its body, admitted by the server."""
    sock = start_request(url, "/predict?name=held.png", {"Content-Length": str(len(body))},
                         body[: len(body) // 2])
    deadline = time.monotonic() + 10
    while _in_flight(url) != 1:
        assert time.monotonic() < deadline, "the request was not admitted"
        time.sleep(0.05)
    return sock


def _exit_status(process, timeout: float = 30) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_drains_then_exits_cleanly(checkpoint):
    process, url = start_serve_command(checkpoint, "--grace", "20")
    body = png()
    try:
        held = _held_request(url, body)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while (ready := httpx.get(f"{url}/ready")).status_code == 200:
            assert time.monotonic() < deadline, "/ready did not turn 503"
            time.sleep(0.02)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        assert httpx.get(f"{url}/health").status_code == 200  # the process is alive
        refused = httpx.post(f"{url}/predict", content=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "the server is shutting down; try another instance"
        assert process.poll() is None  # still waiting for the held request
        held.sendall(body[len(body) // 2:])
        status, _, answer = read_response(held)
        held.close()
        assert status == 200 and b'"detections"' in answer
        assert _exit_status(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read() if process.stdout else ""
    assert "SIGTERM: draining" in log
    assert "drained: 1 requests were in progress, 1 answered, 0 cut" in log, log


def test_requests_past_the_grace_period_get_503(checkpoint):
    process, url = start_serve_command(checkpoint, "--grace", "1", "--body-timeout", "60")
    try:
        held = _held_request(url, png())
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status, headers, answer = read_response(held, timeout=20)
        waited = time.monotonic() - started
        held.close()
        assert status == 503 and headers["retry-after"] == "1"
        assert b"did not finish within its grace period" in answer
        assert 1.0 <= waited < 10
        assert _exit_status(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read() if process.stdout else ""
    assert "drained: 1 requests were in progress, 0 answered, 1 cut after 1 s" in log, log
