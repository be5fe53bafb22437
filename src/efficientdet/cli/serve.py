"""``efficientdet serve``: the HTTP API and web UI of :mod:`efficientdet.deploy.server`."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from .options import (
    DEVICE_ONNX_HELP,
    WEIGHTS_HELP,
    add_backend,
    add_device,
    add_image_size,
    add_model,
    image_size,
)

log = logging.getLogger("efficientdet")

NAME = "serve"
HELP = "HTTP API (POST /predict) and web UI for a detector"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientdet serve`` (model, address, batching, limits)."""
    parser.add_argument("--weights", help=WEIGHTS_HELP)
    add_model(parser)
    parser.add_argument("--pretrained", action="store_true", help="the published COCO weights of --model")
    add_backend(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="after a request arrives, wait this long for others to batch with it")
    parser.add_argument("--max-batch", type=int, default=8, help="images per model call, at most")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="larger request bodies get 413")
    parser.add_argument("--max-pixels", type=int, default=50_000_000,
                        help="images with more pixels (width x height) get 413")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a request may take before it gets 504")
    parser.add_argument("--max-queue", type=int, default=256, help="images waiting at most (503 beyond)")
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="detections scoring at or below this are not returned")
    parser.add_argument("--max-detections", type=int, default=100)
    add_image_size(parser)
    add_device(parser, DEVICE_ONNX_HELP)
    parser.add_argument("--optimize", action="store_true", help="PyTorch: fold BN, channels-last")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: torch's)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until interrupted."""
    from ..deploy.backends import build_predictor
    from ..deploy.server import ServerConfig, create_app, serve

    if args.weights is None and not args.pretrained:
        raise ValueError("serve needs --weights FILE or --model NAME --pretrained")
    size = image_size(args.image_size)
    config = ServerConfig(
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
        request_timeout_s=args.timeout, max_queue=args.max_queue,
    )
    predictor = build_predictor(
        args.weights, backend=args.backend, model_name=args.model, pretrained=args.pretrained,
        image_size=size, score_threshold=args.score_threshold,
        max_detections=args.max_detections, device=args.device, optimize=args.optimize,
        threads=args.threads,
    )
    name = args.weights or f"{args.model} (pretrained)"
    if not _is_loopback(args.host):
        log.warning("listening on %s: reachable from other machines, without authentication",
                    args.host)
    serve(create_app(predictor, config, model_name=str(name)), host=args.host, port=args.port)
    return 0
