"""The server's Prometheus metrics (``GET /metrics``, text exposition format).

Every app has its own :class:`prometheus_client.CollectorRegistry`, so several apps in one
process (tests, a Ray replica beside others) do not share or clash over counters.

| metric | type | what |
|---|---|---|
| ``efficientdet_requests_total{route, status}`` | counter | answered requests |
| ``efficientdet_request_seconds{route}`` | histogram | time from headers to answer |
| ``efficientdet_refusals_total{reason}`` | counter | 4xx/5xx refusals by cause |
| ``efficientdet_in_flight_requests`` | gauge | ``/predict`` requests in progress |
| ``efficientdet_queue_images`` | gauge | images waiting for a detector call |
| ``efficientdet_queue_pixels`` | gauge | decoded pixels admitted and not yet answered |
| ``efficientdet_batch_size`` | histogram | images per detector call |
| ``efficientdet_model_seconds`` | histogram | time of one detector call |
| ``efficientdet_images_total`` | counter | images through the detector; ``rate()`` of it is images/s |
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as _missing:  # the optional `serve` extra
    raise ImportError(
        f"serving needs prometheus-client ({_missing}): pip install 'efficientdet[serve]'"
    ) from _missing

__all__ = ["CONTENT_TYPE", "ROUTES", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Routes are labels as they are; any other path counts as "other" (bounded label values).
ROUTES = frozenset({"/", "/predict", "/health", "/ready", "/stats", "/metrics"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The metrics of one app, in a registry of their own.

    Args:
        max_batch: the batch-size histogram's buckets are the powers of two up to it.
    """

    def __init__(self, max_batch: int = 8) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "efficientdet_requests", "HTTP requests answered, by route and status",
            ["route", "status"], registry=r,
        )
        self.latency = Histogram(
            "efficientdet_request_seconds", "Seconds from a request's headers to its answer",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.refusals = Counter(
            "efficientdet_refusals", "Requests refused, by cause", ["reason"], registry=r
        )
        self.in_flight = Gauge(
            "efficientdet_in_flight_requests", "/predict requests in progress", registry=r
        )
        self.queue_images = Gauge(
            "efficientdet_queue_images", "Images waiting for a detector call", registry=r
        )
        self.queue_pixels = Gauge(
            "efficientdet_queue_pixels", "Decoded pixels admitted and not yet answered",
            registry=r,
        )
        sizes = sorted({2**i for i in range(max_batch.bit_length() + 1) if 2**i <= max_batch}
                       | {max_batch})
        self.batch_size = Histogram(
            "efficientdet_batch_size", "Images per detector call", buckets=sizes, registry=r
        )
        self.model_seconds = Histogram(
            "efficientdet_model_seconds", "Seconds of one detector call",
            buckets=MODEL_BUCKETS, registry=r,
        )
        self.images = Counter(
            "efficientdet_images", "Images run through the detector (rate() is images/s)",
            registry=r,
        )

    def watch(
        self, in_flight: Callable[[], float], queue_images: Callable[[], float],
        queue_pixels: Callable[[], float],
    ) -> None:
        """Read the gauges from these functions at each scrape."""
        self.in_flight.set_function(in_flight)
        self.queue_images.set_function(queue_images)
        self.queue_pixels.set_function(queue_pixels)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        route = path if path in ROUTES else "other"
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        """Count one detector call (the :class:`~efficientdet.deploy.batcher.Batcher`'s
        ``on_batch``)."""
        self.batch_size.observe(images)
        self.model_seconds.observe(seconds)
        self.images.inc(images)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return bytes(generate_latest(self.registry))
