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

``--soak`` is the soak and abuse mode: one server for ``--duration`` seconds (default 600),
``--clients`` (default 16) posting good images with every ``--bad-every``-th request bad
input, and after the baseline phase (``--baseline-fraction`` of the time, default 0.2)
``--slow-clients`` (default 20) uploading a byte every ``--slow-interval`` seconds, again and
again. The server's RSS is sampled every ``--rss-every`` seconds; at the end the server gets
SIGTERM while the clients still post. It writes ``soak.json`` and ``soak_rss.png`` to
``--out`` and fails (exit 1) unless: no good request started before SIGTERM failed (a 503
"shutting down" refusal is not an accepted request), every request in flight at SIGTERM got
200, every bad input a 4xx, every slow upload was cut with 408 at ``--body-timeout``, the
good requests' p99 with the slow clients is within 1.5x of the baseline's, the RSS after the
middle of the run (minute five of ten) stays within 5 % of its value there, and the server
exited with status 0:

    .venv/bin/python benchmarks/load_test.py --soak --model efficientdet_test --max-batch 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
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


def _start_server(weights: Path, max_batch: int, args: argparse.Namespace,
                  extra: tuple[str, ...] = (), log_name: str = "") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights),
        "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch),
        "--batch-wait-ms", str(args.batch_wait_ms), "--max-upload-mb", str(UPLOAD_LIMIT_MB),
        "--timeout", "60", "--device", "cpu", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log_name = log_name or f"server-max-batch-{max_batch}.log"
    log_file = open(Path(args.out) / log_name, "w")  # noqa: SIM115
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


# --- soak and abuse mode (--soak) ---------------------------------------------------------


@dataclass
class Request:
    """One good request of the soak: when it started and ended, and how it was answered."""

    start: float
    end: float
    status: int | None  # None: no HTTP answer (a transport error)
    detail: str = ""


@dataclass
class SlowAttempt:
    """One slow client's upload: how long the server let it trickle and how it ended."""

    start: float
    end: float
    status: int | None  # None: the connection closed without an answer
    sent: int


def _soak_client(url: str, good: bytes, bad: list[tuple[str, bytes]], stop: threading.Event,
                 bad_every: int, index: int, requests: list[Request], bad_log: ClientLog) -> None:
    """Posts until ``stop``: good images, every ``bad_every``-th a bad input."""
    with httpx.Client(timeout=120) as client:
        n = 0
        while not stop.is_set():
            n += 1
            if bad_every and n % bad_every == 0:
                name, body = bad[(n // bad_every + index) % len(bad)]
                try:
                    answer = client.post(f"{url}/predict", files={"file": (name, body)})
                    bad_log.bad_status[answer.status_code] = bad_log.bad_status.get(answer.status_code, 0) + 1
                    draining = answer.status_code == 503 and "shutting down" in answer.text
                    if not 400 <= answer.status_code < 500 and not draining:
                        bad_log.bad_wrong.append(f"{name}: HTTP {answer.status_code}")
                    _honour_retry_after(answer)
                except httpx.HTTPError:
                    pass  # judged with the good ones: the server going away at the end
                continue
            start = time.monotonic()
            try:
                answer = client.post(f"{url}/predict", files={"file": ("photo.jpg", good, "image/jpeg")})
                detail = "" if answer.status_code == 200 else answer.text[:200]
                requests.append(Request(start, time.monotonic(), answer.status_code, detail))
                _honour_retry_after(answer)
            except httpx.HTTPError as err:
                requests.append(Request(start, time.monotonic(), None, f"{type(err).__name__}: {err}"))
                if isinstance(err, httpx.ConnectError):
                    time.sleep(0.2)  # the server has stopped listening


def _honour_retry_after(answer: httpx.Response) -> None:
    """A well-behaved client waits as long as a 503's ``Retry-After`` says."""
    if answer.status_code == 503:
        time.sleep(float(answer.headers.get("retry-after", "1")))


def _slow_client(port: int, body: bytes, stop: threading.Event, interval: float, cap_s: float,
                 attempts: list[SlowAttempt]) -> None:
    """Uploads ``body`` one byte every ``interval`` seconds, again and again until ``stop``;
    each attempt ends when the server answers or closes (or after ``cap_s``)."""
    head = (f"POST /predict?name=slow.jpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(head)
        except OSError:
            return  # the server has stopped listening
        start, sent, status = time.monotonic(), 0, None
        with sock:
            while time.monotonic() - start < cap_s:
                readable, _, _ = select.select([sock], [], [], interval)
                if readable:
                    status = _status_of(sock)
                    break
                try:
                    sock.sendall(body[sent:sent + 1])
                    sent += 1
                except OSError:
                    break
        attempts.append(SlowAttempt(start, time.monotonic(), status, sent))


def _status_of(sock: socket.socket) -> int | None:
    try:
        line = sock.recv(4096).split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else None
    except (OSError, ValueError):
        return None


def _sample_rss(process: subprocess.Popen, t0: float, every: float, samples: list[tuple[float, float]]) -> None:
    """``(seconds since t0, RSS MB)`` of the server every ``every`` seconds while it runs."""
    n = 0
    while process.poll() is None:
        try:
            samples.append((round(time.monotonic() - t0, 1), round(_rss_mb(process), 1)))
        except psutil.Error:
            return
        n += 1
        time.sleep(max(0.0, t0 + n * every - time.monotonic()))


def _p99(latencies_ms: list[float]) -> float | None:
    return round(float(np.percentile(latencies_ms, 99)), 1) if latencies_ms else None


def run_soak(weights: Path, args: argparse.Namespace) -> dict:
    """One server, ``args.clients`` good clients for ``args.duration`` s (every
    ``args.bad_every``-th request bad), ``args.slow_clients`` byte-a-second uploads after the
    baseline phase, the server's RSS every ``args.rss_every`` s, then SIGTERM under load."""
    good = _jpeg()
    bad = _bad_inputs(good)
    extra = ("--body-timeout", str(args.body_timeout), "--grace", str(args.grace))
    process, url = _start_server(weights, args.max_batch[0], args, extra, "server-soak.log")
    port = int(url.rsplit(":", 1)[1])
    for _ in range(3):  # the allocator and the threads settle before the clock starts
        httpx.post(f"{url}/predict", files={"file": ("w.jpg", good)}, timeout=60)
    requests: list[Request] = []
    attempts: list[SlowAttempt] = []
    rss: list[tuple[float, float]] = []
    bad_log = ClientLog()
    stop_good, stop_slow = threading.Event(), threading.Event()
    t0 = time.monotonic()
    threads = [threading.Thread(target=_sample_rss, args=(process, t0, args.rss_every, rss))]
    threads += [threading.Thread(target=_soak_client, args=(url, good, bad, stop_good, args.bad_every,
                                                            i, requests, bad_log))
                for i in range(args.clients)]
    for t in threads:
        t.start()
    baseline_s = args.duration * args.baseline_fraction
    time.sleep(max(0.0, t0 + baseline_s - time.monotonic()))
    slow = [threading.Thread(target=_slow_client, args=(port, good, stop_slow, args.slow_interval,
                                                        args.body_timeout + 30, attempts))
            for _ in range(args.slow_clients)]
    for t in slow:
        t.start()
    time.sleep(max(0.0, t0 + args.duration - time.monotonic()))
    t_sigterm = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stop_slow.set()
    try:
        exit_status: int | None = process.wait(timeout=args.grace + args.body_timeout + 60)
    except subprocess.TimeoutExpired:
        exit_status = None
        process.kill()
    stop_good.set()
    for t in threads + slow:
        t.join(timeout=args.body_timeout + 60)
    log_text = (Path(args.out) / "server-soak.log").read_text()
    return _soak_report(requests, attempts, rss, bad_log, t0, baseline_s, t_sigterm, exit_status,
                        log_text, args)


def _soak_report(requests: list[Request], attempts: list[SlowAttempt], rss: list[tuple[float, float]],
                 bad_log: ClientLog, t0: float, baseline_s: float, t_sigterm: float,
                 exit_status: int | None, log_text: str, args: argparse.Namespace) -> dict:
    """The soak's figures and its pass/fail checks."""
    before = [r for r in requests if r.start < t_sigterm]
    refused = [r for r in before if r.status == 503 and "shutting down" in r.detail]
    failed = [r for r in before if r.status != 200 and r not in refused]
    in_flight = [r for r in before if r.end > t_sigterm and r not in refused]
    settle = 5.0  # skipped at the start of each phase: the clients start, the slow ones connect
    baseline = [(r.end - r.start) * 1000 for r in requests
                if r.status == 200 and t0 + settle <= r.start and r.end < t0 + baseline_s]
    with_slow = [(r.end - r.start) * 1000 for r in requests
                 if r.status == 200 and t0 + baseline_s + settle <= r.start and r.end < t_sigterm]
    p99_base, p99_slow = _p99(baseline), _p99(with_slow)
    ended = [a for a in attempts if a.status is not None]
    cut_s = [a.end - a.start for a in ended]
    reference_t = args.duration / 2  # minute five of a ten-minute soak
    ref = min(rss, key=lambda s: abs(s[0] - reference_t))[1] if rss else None
    later = [mb for t, mb in rss if reference_t <= t <= args.duration]
    drift = max(abs(mb - ref) / ref for mb in later) if ref and later else None
    drained = [line for line in log_text.splitlines() if "drained:" in line]
    report = {
        "duration_s": args.duration, "clients": args.clients, "slow_clients": args.slow_clients,
        "good_requests": sum(r.status == 200 for r in requests),
        "good_per_s": round(sum(r.status == 200 for r in before) / (t_sigterm - t0), 2),
        "good_failed_before_sigterm": len(failed),
        "failure_examples": [f"{r.status}: {r.detail}" for r in failed[:5]],
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_answered": sum(r.status == 200 for r in in_flight),
        "refused_while_draining": len(refused) + sum(r.status == 503 for r in requests if r.start >= t_sigterm),
        "bad_requests": sum(bad_log.bad_status.values()),
        "bad_status": {str(k): v for k, v in sorted(bad_log.bad_status.items())},
        "bad_not_4xx": bad_log.bad_wrong[:5],
        "p50_ms_baseline": round(statistics.median(baseline), 1) if baseline else None,
        "p99_ms_baseline": p99_base,
        "p50_ms_with_slow": round(statistics.median(with_slow), 1) if with_slow else None,
        "p99_ms_with_slow": p99_slow,
        "p99_ratio": round(p99_slow / p99_base, 3) if p99_base and p99_slow else None,
        "slow_attempts": len(attempts),
        "slow_status": {str(k): sum(a.status == k for a in attempts)
                        for k in sorted({a.status for a in attempts}, key=str)},
        "slow_cut_s_min": round(min(cut_s), 2) if cut_s else None,
        "slow_cut_s_max": round(max(cut_s), 2) if cut_s else None,
        "slow_bytes_max": max((a.sent for a in attempts), default=0),
        "rss_reference_t_s": reference_t, "rss_reference_mb": ref,
        "rss_max_drift_after_reference": round(drift, 4) if drift is not None else None,
        "rss_samples": rss,
        "exit_status": exit_status,
        "server_drain_log": drained,
    }
    report["checks"] = {
        "good requests never failed": not failed,
        "every request in flight at SIGTERM answered 200": len(in_flight) == report["in_flight_answered"],
        "bad inputs all 4xx": not bad_log.bad_wrong,
        "slow clients cut at the deadline (408)": bool(ended) and all(
            a.status == 408 and args.body_timeout - 0.5 <= a.end - a.start <= args.body_timeout + 3
            for a in ended) and len(ended) == len(attempts),
        "p99 with slow clients <= 1.5x without": report["p99_ratio"] is not None and report["p99_ratio"] <= 1.5,
        "RSS within 5% of the reference after it": drift is not None and drift <= 0.05,
        "exit status 0 or 143": exit_status in (0, 143, -15),
    }
    return report


def _plot_soak(report: dict, args: argparse.Namespace, requests_path: Path) -> Path:
    """RSS over time with the +-5 % band around the reference (and when the slow clients
    came and SIGTERM went); written next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, mb = zip(*report["rss_samples"], strict=True)
    ref, ref_t = report["rss_reference_mb"], report["rss_reference_t_s"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot([x / 60 for x in t], mb, marker=".", label="server RSS (every 5 s)")
    ax.fill_between([ref_t / 60, args.duration / 60], ref * 0.95, ref * 1.05, alpha=0.2,
                    label="reference +-5 %")
    ax.axvline(args.duration * args.baseline_fraction / 60, linestyle="--", color="grey")
    ax.axvline(args.duration / 60, linestyle=":", color="black")
    ax.text(args.duration * args.baseline_fraction / 60, min(mb), " slow clients join", fontsize=8)
    ax.text(args.duration / 60, min(mb), " SIGTERM", fontsize=8)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"soak: {args.clients} clients, {args.slow_clients} slow, "
                 f"p99 {report['p99_ms_baseline']} -> {report['p99_ms_with_slow']} ms", fontsize=10)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    out = requests_path.with_name("soak_rss.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="checkpoint to serve (default: --model, random weights)")
    parser.add_argument("--model", default="tf_efficientdet_lite0")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 8; --soak: 16)")
    parser.add_argument("--duration", type=float,
                        help="seconds per setting (default 30; --soak: 600, the whole soak)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--bad-every", type=int, default=10,
                        help="every N-th request of a client is bad input (0: none)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client, at most")
    parser.add_argument("--out", default="benchmarks/results/load-test")
    soak = parser.add_argument_group("soak and abuse mode")
    soak.add_argument("--soak", action="store_true",
                      help="one long run with slow clients and a SIGTERM at the end (--max-batch: first value)")
    soak.add_argument("--slow-clients", type=int, default=20, help="clients sending a byte at a time")
    soak.add_argument("--slow-interval", type=float, default=1.0, help="seconds between their bytes")
    soak.add_argument("--baseline-fraction", type=float, default=0.2,
                      help="share of --duration before the slow clients join (the p99 baseline)")
    soak.add_argument("--body-timeout", type=float, default=30.0, help="the server's --body-timeout")
    soak.add_argument("--grace", type=float, default=40.0, help="the server's --grace")
    soak.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    args = parser.parse_args()
    args.clients = args.clients or (16 if args.soak else 8)
    args.duration = args.duration or (600.0 if args.soak else 30.0)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.soak:
        return _soak_main(args)
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


def _soak_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = run_soak(_weights(args, Path(tmp)), args)
    report["model"] = args.weights or f"{args.model} (random weights)"
    report["max_batch"] = args.max_batch[0]
    report["command"] = "benchmarks/load_test.py " + " ".join(sys.argv[1:])
    path = Path(args.out) / "soak.json"
    path.write_text(json.dumps(report, indent=1))
    plot = _plot_soak(report, args, path) if report["rss_samples"] else None
    shown = {k: v for k, v in report.items() if k not in ("rss_samples", "checks")}
    print(json.dumps(shown, indent=1))
    for check, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}: {check}")
    print(f"wrote {path}" + (f" and {plot}" if plot else ""))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
