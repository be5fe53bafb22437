"""The same HTTP API on Ray Serve: model replicas across a Ray cluster's machines.

Each replica runs the app of :func:`~efficientdet.deploy.server.create_app` (the same routes,
limits, API key, Host check, request ids and access log) with its own copy of the model;
Ray Serve's HTTP proxy spreads the requests over the replicas, and a replica's concurrent
requests are batched by ``@serve.batch`` (:class:`RayBatcher`) instead of the in-process
:class:`~efficientdet.deploy.batcher.Batcher`. ``/metrics`` answers for the replica that
got the scrape; Ray's own metrics cover the whole deployment.

From the command line: ``efficientdet serve --weights W --ray --replicas N``. From Python::

    from ray import serve
    from efficientdet.deploy.ray_serve import RayOptions, build_application

    app = build_application({"weights": "model.safetensors"}, ServerConfig(), RayOptions())
    serve.run(app, name="efficientdet", route_prefix="/")

Ray Serve is the ``ray-serve`` extra: ``pip install 'efficientdet[ray-serve]'``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

try:
    import ray
    from ray import serve
except ImportError as _missing:  # the optional `ray-serve` extra
    raise ImportError(
        f"--ray needs Ray Serve ({_missing}): pip install 'efficientdet[ray-serve]'"
    ) from _missing

from .backends import Predictor
from .batcher import BatchStats, DetectorFailed
from .metrics import ServerMetrics
from .server import ServerConfig

__all__ = ["RayBatcher", "RayOptions", "build_application", "run_ray"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where Ray Serve listens and how many replicas it runs.

    Attributes:
        host: the HTTP proxy's address.
        port: the HTTP proxy's port.
        replicas: model replicas (each loads the model).
        replica_cpus: CPUs Ray reserves for each replica.
        grace_s: on shut-down, how long a replica's requests in progress may take.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    replica_cpus: float = 1.0
    grace_s: float = 30.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if self.replica_cpus <= 0:
            raise ValueError(f"replica_cpus must be > 0, got {self.replica_cpus}")


class RayBatcher:
    """The app's batcher inside a Ray Serve replica: ``@serve.batch`` collects concurrent
    requests' images (at most ``config.max_batch``, waiting up to ``config.batch_wait_ms``)
    and runs the detector on them in a thread.

    Args:
        predictor: the replica's model.
        config: ``max_batch`` and ``batch_wait_ms`` are read.
        metrics: each detector call is counted there.
    """

    def __init__(self, predictor: Predictor, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.stats = BatchStats()
        self._waiting = 0

        @serve.batch(max_batch_size=config.max_batch,
                     batch_wait_timeout_s=config.batch_wait_ms / 1000)
        async def detect(items: list[tuple[Image.Image, str]]) -> list[dict[str, Any]]:
            images = [image for image, _ in items]
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(predictor.predict_fn, images)
            except Exception:
                ids = ", ".join(rid for _, rid in items)
                log.exception("detector call on %d images failed (requests %s)", len(items), ids)
                self.stats.errors += len(items)
                raise DetectorFailed("the detector failed") from None
            seconds = time.perf_counter() - started
            self.stats.calls += 1
            self.stats.images += len(images)
            self.stats.model_seconds += seconds
            self.stats.batch_sizes[len(images)] += 1
            metrics.observe_batch(len(images), seconds)
            return [{"prediction": r, "batch_size": len(images)} for r in results]

        self._detect = detect

    @property
    def queued(self) -> int:
        """Requests waiting for their batch's result (in the batch being run too)."""
        return self._waiting

    def start(self) -> None:
        """Nothing to start: Ray Serve runs the batching."""

    async def stop(self) -> None:
        """Nothing to stop: Ray Serve drains the replica."""

    async def predict(self, image: Image.Image, request_id: str = "-") -> dict[str, Any]:
        """``{"prediction", "batch_size"}`` for one image, run in a batch with others."""
        self._waiting += 1
        try:
            answer: dict[str, Any] = await self._detect((image, request_id))
            return answer
        finally:
            self._waiting -= 1


class EfficientDetReplica:
    """One Ray Serve replica; its ASGI app is built on the replica by
    :func:`build_application`'s builder."""


def build_application(
    predictor_options: dict[str, Any],
    config: ServerConfig,
    options: RayOptions,
    *,
    model_name: str = "detector",
) -> Any:
    """The Ray Serve application (``serve.run`` it): ``options.replicas`` replicas, each
    building its predictor with ``build_predictor(**predictor_options)`` and serving it with
    :func:`~efficientdet.deploy.server.create_app` and :class:`RayBatcher`."""

    def build_asgi_app() -> Any:
        from .backends import build_predictor
        from .server import create_app

        predictor = build_predictor(**predictor_options)
        return create_app(predictor, config, model_name=model_name, batcher=RayBatcher)

    ingress = serve.ingress(build_asgi_app)(EfficientDetReplica)
    deployment = serve.deployment(
        name="efficientdet", num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.replica_cpus},
        max_ongoing_requests=config.limits.max_concurrency,
        graceful_shutdown_timeout_s=options.grace_s,
    )(ingress)
    return deployment.bind()


def run_ray(
    predictor_options: dict[str, Any],
    config: ServerConfig,
    options: RayOptions,
    *,
    model_name: str = "detector",
) -> None:
    """Start (or join, with ``RAY_ADDRESS``) a Ray cluster, deploy the replicas behind Ray
    Serve's proxy on ``options.host:options.port``, and serve until SIGTERM or SIGINT; then
    shut the deployment down (its replicas finish their requests within ``grace_s``)."""
    ray.init(include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_application(predictor_options, config, options, model_name=model_name),
                  name="efficientdet", route_prefix="/", blocking=False)
        log.info("Ray Serve: %d replicas of %s on http://%s:%d", options.replicas, model_name,
                 options.host, options.port)
        while not stop.wait(0.5):
            pass
        log.info("stopping: the replicas finish their requests (at most %g s)", options.grace_s)
        serve.shutdown()
    finally:
        ray.shutdown()
