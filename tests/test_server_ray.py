"""``efficientdet serve --ray``: the same API on Ray Serve replicas (a local Ray cluster) gives
the detections of the single-process server, batches concurrent requests with
``@serve.batch``, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'efficientdet[ray-serve]')")

from fastapi.testclient import TestClient  # noqa: E402

from efficientdet.deploy.server import create_app  # noqa: E402
from serving import REPO, free_port, png, tiny_checkpoint, tiny_predictor  # noqa: E402


@pytest.mark.slow
def test_ray_serve_replicas_give_the_single_server_detections(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    with TestClient(create_app(tiny_predictor(checkpoint)), base_url="http://localhost") as client:
        expected = client.post("/predict?name=a.png", content=png()).json()

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "efficientdet", "serve", "--weights", str(checkpoint), "--ray",
         "--replicas", "2", "--replica-cpus", "0.5", "--port", str(port), "--score-threshold",
         "0", "--max-detections", "5", "--batch-wait-ms", "200", "--grace", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "Ray Serve did not become ready"
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        got = httpx.post(f"{url}/predict?name=a.png", content=png(), timeout=60)
        assert got.status_code == 200, got.text
        assert got.headers["x-request-id"]  # the same app, middleware and all
        body = got.json()
        assert (body["file_name"], body["width"], body["height"]) == ("a.png", 96, 64)
        assert len(body["detections"]) == len(expected["detections"]) == 5
        for a, b in zip(body["detections"], expected["detections"], strict=True):
            assert a["category"] == b["category"]
            assert a["box"] == pytest.approx(b["box"], abs=1e-3)
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert httpx.post(f"{url}/predict", content=b"not an image").status_code == 400

        def post(i: int) -> httpx.Response:
            return httpx.post(f"{url}/predict", content=png(), timeout=120)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        assert max(a.json()["batch_size"] for a in answers) > 1  # @serve.batch joined them
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=120)
        assert status == 0, process.stdout.read()[-3000:] if process.stdout else status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
