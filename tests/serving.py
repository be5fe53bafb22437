"""Helpers of the server tests: a tiny model, images, a live uvicorn, raw HTTP over sockets,
and ``efficientdet serve`` as a subprocess. Only 127.0.0.1 is ever contacted."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from PIL import Image

from efficientdet.deploy.backends import Predictor, build_predictor
from efficientdet.deploy.lifecycle import HttpOptions

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "bird"]


def tiny_checkpoint(folder: Path) -> Path:
    """The registered tiny test model with random weights and three class names."""
    import efficientdet as ed

    model = ed.create_model("efficientdet_test", num_classes=3)
    return ed.save_checkpoint(model, folder / "tiny.safetensors", metadata={"class_names": CLASSES})


def tiny_predictor(checkpoint: Path) -> Predictor:
    # Random weights score about 0.01: keep everything so that there are boxes to check.
    return build_predictor(checkpoint, score_threshold=0.0, max_detections=5, device="cpu")


def png(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def counting(predictor: Predictor, delay: float = 0.0) -> tuple[Predictor, list[int]]:
    """The same predictor, recording each call's batch size and taking ``delay`` s longer."""
    calls: list[int] = []

    def predict_fn(images):
        calls.append(len(images))
        time.sleep(delay)
        return predictor.predict_fn(images)

    return predictor._replace(predict_fn=predict_fn), calls


class LiveServer:
    """uvicorn in a background thread on a free port of 127.0.0.1, with the server's own
    uvicorn settings (:class:`HttpOptions`)."""

    def __init__(self, app, **options) -> None:
        config = HttpOptions(host="127.0.0.1", port=0, log_level="warning", **options)
        self.server = uvicorn.Server(config.uvicorn_config(app))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def start_request(url: str, path: str, headers: dict[str, str], body: bytes = b"") -> socket.socket:
    """A connection that has sent a POST's headers and ``body`` (maybe part of what
    Content-Length announces), left open."""
    sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port_of(url)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of the response on ``sock``, read until the server closes
    the connection or the body announced by Content-Length is in."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (reads return nothing)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve_command(checkpoint: Path, *options: str, env: dict[str, str] | None = None
                        ) -> tuple[subprocess.Popen, str]:
    """``python -m efficientdet serve`` on a free port of 127.0.0.1, once ``/ready``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "efficientdet", "serve", "--weights", str(checkpoint),
         "--port", str(port), "--score-threshold", "0", *options],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read() if process.stdout else "server exited")
        assert time.monotonic() < deadline, "the server did not become ready"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
