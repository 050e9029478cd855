"""``/metrics`` in the Prometheus text format (``prometheus-client``): requests by route and
status, request latency, network batch sizes, images classified, queue depth."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from tfguess.serve.context import ServeContext

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

router = APIRouter()
no_metrics_router = APIRouter()  # stands in when prometheus-client is missing


class ServeMetrics:
    """The server's metrics, in a registry of their own (several apps in one process stay apart)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tfguess_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tfguess_http_request_duration_seconds",
                                 "time from a request's arrival to the end of its answer",
                                 ["method", "route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("tfguess_batch_size", "images per network batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("tfguess_images_classified", "images run through the network",
                              registry=self.registry)
        self.queue_depth = Gauge("tfguess_queue_depth",
                                 "images admitted and not yet answered (decoding or queued)",
                                 registry=self.registry)

    def on_batch(self, n: int) -> None:
        self.batch_size.observe(n)
        self.images.inc(n)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class NoMetrics:
    """Stands in when ``prometheus-client`` is missing: the server runs, ``/metrics`` says why not."""

    reason = "prometheus-client is not installed: pip install 'tfguess[serve]'"

    def on_batch(self, n: int) -> None:
        pass

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        pass


def create_metrics() -> "ServeMetrics | NoMetrics":
    try:
        return ServeMetrics()
    except ImportError:
        return NoMetrics()


def register(app, ctx: ServeContext) -> None:
    """``/metrics`` of ``app.state.metrics``; without prometheus-client, a 503 that says why."""
    metrics = app.state.metrics
    if isinstance(metrics, NoMetrics):
        ctx.log(f"note: no /metrics: {metrics.reason}")
        app.include_router(no_metrics_router)
        return
    metrics.queue_depth.set_function(lambda: ctx.batcher.admitted)
    app.include_router(router)


@no_metrics_router.get("/metrics", summary="Prometheus metrics (needs prometheus-client)")
def no_scrape(request: Request) -> Response:
    return PlainTextResponse(request.app.state.metrics.reason + "\n", 503)


@router.get("/metrics", summary="Prometheus metrics: requests, latency, batch sizes, queue depth")
def scrape(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
