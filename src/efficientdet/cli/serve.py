"""``efficientdet serve``: the HTTP API and web UI of :mod:`efficientdet.deploy.server`, in one
process under uvicorn, or as Ray Serve replicas (``--ray``)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from .options import (
    DEVICE_ONNX_HELP,
    WEIGHTS_HELP,
    add_backend,
    add_device,
    add_image_size,
    add_model,
    image_size,
)

if TYPE_CHECKING:
    from ..deploy.security import Security

log = logging.getLogger("efficientdet")

NAME = "serve"
HELP = "HTTP API (POST /predict) and web UI for a detector"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientdet serve`` (model, address, batching, limits, security)."""
    parser.add_argument("--weights", help=WEIGHTS_HELP)
    add_model(parser)
    parser.add_argument("--pretrained", action="store_true", help="the published COCO weights of --model")
    add_backend(parser)
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="detections scoring at or below this are not returned")
    parser.add_argument("--max-detections", type=int, default=100)
    add_image_size(parser)
    add_device(parser, DEVICE_ONNX_HELP)
    parser.add_argument("--optimize", action="store_true", help="PyTorch: fold BN, channels-last")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: torch's)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="after a request arrives, wait this long for others to batch with it")
    parser.add_argument("--max-batch", type=int, default=8, help="images per model call, at most")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds from the upload being in to the answer (504 beyond)")
    _add_limits(parser)
    _add_security(parser)
    parser.add_argument("--ray", action="store_true",
                        help="serve with Ray Serve replicas (the 'ray-serve' extra) instead of one process")
    parser.add_argument("--replicas", type=int, default=1, help="--ray: model replicas")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="--ray: CPUs per replica")


def _add_limits(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (checked before the work they would cost)")
    group.add_argument("--max-upload-mb", type=float, default=20.0, help="larger request bodies get 413")
    group.add_argument("--max-pixels", type=int, default=50_000_000,
                       help="images with more pixels (width x height, from the header) get 413")
    group.add_argument("--max-concurrency", type=int, default=64,
                       help="/predict requests in progress at once; more get 503 (default 64)")
    group.add_argument("--max-queue-mpixels", type=float, default=200.0,
                       help="megapixels admitted and not yet answered; more get 503 (default 200)")
    group.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a request body may take to arrive; slower gets 408 (default 30)")
    group.add_argument("--limit-connections", type=int, default=256,
                       help="connections plus requests in progress; beyond, uvicorn answers 503 "
                       "(uvicorn's limit_concurrency, default 256)")
    group.add_argument("--keep-alive", type=int, default=5,
                       help="seconds an idle keep-alive connection stays open (default 5)")
    group.add_argument("--max-header-kb", type=int, default=16,
                       help="request line and headers above this get 400 (default 16)")
    group.add_argument("--grace", type=float, default=30.0,
                       help="on SIGTERM, seconds requests in progress get to finish before 503 "
                       "(default 30)")


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument("--api-key",
                       help="key clients must send (Authorization: Bearer KEY or X-API-Key: KEY); "
                       "better given as the EFFICIENTDET_API_KEY environment variable, which "
                       "other users cannot see in the process list")
    group.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without an API key")
    group.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="Host header served, repeatable (localhost names and --host are "
                       "always served; *.example.com for subdomains, * for any)")
    group.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="origin whose web pages may call the API, repeatable (default none)")
    group.add_argument("--metrics-public", action="store_true",
                       help="/metrics answers without the API key")


def _security(args: argparse.Namespace) -> Security:
    """The API key (option or environment), allowed hosts and CORS of the command line;
    refuses a non-loopback --host without a key unless --insecure."""
    from ..deploy.security import ENV_API_KEY, LOOPBACK_HOSTS, Security, check_exposure

    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    check_exposure(args.host, api_key, args.insecure)
    hosts = list(LOOPBACK_HOSTS)
    if args.host not in ("0.0.0.0", "::", ""):  # a specific address: it is a name clients use
        hosts.append(args.host)
    if api_key is None and args.insecure and args.host in ("0.0.0.0", "::"):
        log.warning("listening on %s without an API key (--insecure)", args.host)
    return Security(
        api_key=api_key, allowed_hosts=tuple(dict.fromkeys(hosts + args.allowed_host)),
        cors_origins=tuple(args.cors_origin), metrics_public=args.metrics_public,
    )


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until a signal stops it (draining first)."""
    from ..deploy.limits import Limits
    from ..deploy.server import ServerConfig

    if args.weights is None and not args.pretrained:
        raise ValueError("serve needs --weights FILE or --model NAME --pretrained")
    config = ServerConfig(
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        request_timeout_s=args.timeout, security=_security(args),
        limits=Limits(
            max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
            max_concurrency=args.max_concurrency,
            max_queue_pixels=int(args.max_queue_mpixels * 1e6), body_timeout_s=args.body_timeout,
        ),
    )
    predictor_options: dict[str, Any] = dict(
        weights=args.weights, backend=args.backend, model_name=args.model,
        pretrained=args.pretrained, image_size=image_size(args.image_size),
        score_threshold=args.score_threshold, max_detections=args.max_detections,
        device=args.device, optimize=args.optimize, threads=args.threads,
    )
    name = str(args.weights or f"{args.model} (pretrained)")
    if args.ray:
        from ..deploy.ray_serve import RayOptions, run_ray

        run_ray(predictor_options, config, RayOptions(
            host=args.host, port=args.port, replicas=args.replicas, replica_cpus=args.replica_cpus,
            grace_s=args.grace,
        ), model_name=name)
        return 0
    from ..deploy.backends import build_predictor
    from ..deploy.lifecycle import HttpOptions, serve
    from ..deploy.server import create_app

    http = HttpOptions(
        host=args.host, port=args.port, limit_concurrency=args.limit_connections,
        timeout_keep_alive_s=args.keep_alive, max_header_bytes=args.max_header_kb * 1024,
        grace_s=args.grace,
    )
    predictor = build_predictor(predictor_options.pop("weights"), **predictor_options)
    serve(create_app(predictor, config, model_name=name), http)
    return 0
