"""Load test of ``efficientdet serve``: N concurrent clients for a fixed time against a server
on 127.0.0.1, once per ``--max-batch`` setting.

    .venv/bin/python benchmarks/load_test.py --model tf_efficientdet_lite0 --clients 8 \
        --duration 30 --max-batch 1 8

For each setting it starts the server as its own process (``python -m efficientdet serve``),
waits for ``/ready``, lets ``--clients`` threads post a 640x480 JPEG in a loop until
``--duration`` seconds have passed, and reports throughput, p50/p99 latency of the good
requests, errors (a good image not answered with 200, or a failed connection: must be 0),
the server's RSS before and after, and the mean batch the server ran. Every
``--bad-every``-th request of a client is bad input (text bytes, an empty body, a truncated
JPEG, a body above the upload limit) that must get a 4xx; ``/health`` must still answer at
the end. Loops are bounded by time and by ``--max-requests`` per client; only 127.0.0.1 is
contacted. Without ``--weights`` the model gets random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT_MB = 2.0


def _jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    pixels = (pixels + rng.integers(0, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _bad_inputs(good: bytes) -> list[tuple[str, bytes]]:
    """(name, body) of uploads the server must refuse with a 4xx."""
    return [
        ("notes.txt", b"this is text, not an image\n" * 10),
        ("empty.jpg", b""),
        ("cut.jpg", good[: len(good) // 3]),
        ("huge.jpg", b"\xff" * int(UPLOAD_LIMIT_MB * 2**20 + 1024)),
    ]


@dataclass
class ClientLog:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bad_status: dict[int, int] = field(default_factory=dict)
    bad_wrong: list[str] = field(default_factory=list)


def _client(url: str, good: bytes, bad: list[tuple[str, bytes]], deadline: float,
            bad_every: int, max_requests: int, log: ClientLog, index: int) -> None:
    with httpx.Client(timeout=60) as client:
        for n in range(max_requests):
            if time.monotonic() >= deadline:
                break
            if bad_every and n % bad_every == bad_every - 1:
                name, body = bad[(n // bad_every + index) % len(bad)]
                try:
                    answer = client.post(f"{url}/predict", files={"file": (name, body)})
                    log.bad_status[answer.status_code] = log.bad_status.get(answer.status_code, 0) + 1
                    if not 400 <= answer.status_code < 500:
                        log.bad_wrong.append(f"{name}: HTTP {answer.status_code}")
                except httpx.HTTPError as err:
                    log.bad_wrong.append(f"{name}: {type(err).__name__}: {err}")
                continue
            start = time.perf_counter()
            try:
                answer = client.post(f"{url}/predict",
                                     files={"file": ("photo.jpg", good, "image/jpeg")})
            except httpx.HTTPError as err:
                log.errors.append(f"{type(err).__name__}: {err}")
                continue
            elapsed = (time.perf_counter() - start) * 1000
            if answer.status_code != 200:
                log.errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            else:
                log.latencies_ms.append(elapsed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(weights: Path, max_batch: int, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights),
        "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch),
        "--batch-wait-ms", str(args.batch_wait_ms), "--max-upload-mb", str(UPLOAD_LIMIT_MB),
        "--timeout", "60", "--device", "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log_file = open(Path(args.out) / f"server-max-batch-{max_batch}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_file.name}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready within 180 s; see {log_file.name}")


def _rss_mb(process: subprocess.Popen) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


def run_setting(weights: Path, max_batch: int, args: argparse.Namespace) -> dict:
    """One server with ``max_batch``, ``args.clients`` clients for ``args.duration`` s."""
    good = _jpeg()
    bad = _bad_inputs(good)
    process, url = _start_server(weights, max_batch, args)
    try:
        # A few requests first so that the allocator and the threads have settled.
        for _ in range(3):
            httpx.post(f"{url}/predict", files={"file": ("w.jpg", good)}, timeout=60)
        rss_before = _rss_mb(process)
        stats_before = httpx.get(f"{url}/stats").json()
        logs = [ClientLog() for _ in range(args.clients)]
        deadline = time.monotonic() + args.duration
        start = time.monotonic()
        threads = [
            threading.Thread(target=_client, args=(url, good, bad, deadline, args.bad_every,
                                                   args.max_requests, logs[i], i))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.duration + 120)
        wall = time.monotonic() - start
        stats = httpx.get(f"{url}/stats").json()
        healthy = httpx.get(f"{url}/health").status_code == 200
        rss_after = _rss_mb(process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    latencies = sorted(x for log in logs for x in log.latencies_ms)
    images = stats["images"] - stats_before["images"]
    calls = stats["model_calls"] - stats_before["model_calls"]
    bad_status: dict[str, int] = {}
    for log in logs:
        for code, count in log.bad_status.items():
            bad_status[str(code)] = bad_status.get(str(code), 0) + count
    return {
        "max_batch": max_batch,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "good_requests": len(latencies),
        "throughput_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "errors": sum(len(log.errors) for log in logs),
        "error_examples": [e for log in logs for e in log.errors][:5],
        "bad_requests": sum(bad_status.values()),
        "bad_status": bad_status,
        "bad_not_4xx": [e for log in logs for e in log.bad_wrong][:5],
        "healthy_after": healthy,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "model_calls": calls,
        "mean_batch": round(images / calls, 2) if calls else 0.0,
    }


def _weights(args: argparse.Namespace, folder: Path) -> Path:
    if args.weights:
        return Path(args.weights)
    import torch

    import efficientdet as ed

    torch.manual_seed(0)
    model = ed.create_model(args.model, num_classes=90, pretrained_backbone=False)
    return ed.save_checkpoint(model, folder / f"{args.model}-random.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="checkpoint to serve (default: --model, random weights)")
    parser.add_argument("--model", default="tf_efficientdet_lite0")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per setting")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--bad-every", type=int, default=10,
                        help="every N-th request of a client is bad input (0: none)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client, at most")
    parser.add_argument("--out", default="benchmarks/results/load-test")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(args, Path(tmp))
        rows = [run_setting(weights, b, args) for b in args.max_batch]
    print(f"{args.clients} clients x {args.duration:g} s, {args.weights or args.model + ' (random weights)'}, "
          f"batch wait {args.batch_wait_ms:g} ms, every {args.bad_every}th request bad input")
    print("| max batch | good req/s | p50 ms | p99 ms | errors | bad inputs (status) | "
          "mean batch | RSS before -> after MB | healthy after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["bad_status"].items()))
        print(f"| {r['max_batch']} | {r['throughput_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['errors']} | {r['bad_requests']} ({statuses}) | {r['mean_batch']} | "
              f"{r['rss_before_mb']} -> {r['rss_after_mb']} | {r['healthy_after']} |")
    if len(rows) > 1 and rows[0]["throughput_per_s"]:
        print(f"throughput max-batch {rows[-1]['max_batch']} / max-batch {rows[0]['max_batch']}: "
              f"{rows[-1]['throughput_per_s'] / rows[0]['throughput_per_s']:.2f}x")
    (Path(args.out) / "load_test.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                              indent=1))
    failed = any(r["errors"] or r["bad_not_4xx"] or not r["healthy_after"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
