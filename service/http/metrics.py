"""Prometheus metrics: GET /metrics, on a listener of its own (WALLET_METRICS_LISTEN,
loopback by default), never on the API's address: the counters tell who is busy with what.

With several workers, each process writes its samples to PROMETHEUS_MULTIPROC_DIR
(`wallet serve` sets one up) and /metrics merges them; the metrics socket is bound once, by
the gunicorn master, and whichever worker accepts a scrape answers with the merged registry
and the process_* of every process, by pid (service/http/process_metrics.py). The ledger
gauges are read from Redis by the process that answers, at scrape time, and left out while
Redis does not answer (service/http/ledger_gauges.py): /metrics answers all the same.
"""

import os
import time
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.http.errors import Handler
from service.http.ledger_gauges import LedgerGauges, LedgerReading, read_ledger_if_redis_answers
from service.http.logs import route_of
from service.http.process_metrics import ServiceProcesses
from service.http.state import REDIS
from service.redis.types import RedisClient

HTTP_REQUESTS = Counter(
    "wallet_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "wallet_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
MONEY_OPERATIONS = Counter(
    "wallet_money_operations_total",
    "Deposits and transfers by result: ok, replayed, or the refusal code",
    ["operation", "result"],
)


# The method is the client's to choose: any other than these is counted as "OTHER", so that
# no client can make the series (and the multiprocess files) grow without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = route_of(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        method = request.method if request.method in _METHODS else "OTHER"
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)


class _ThisProcess(Collector):
    """What this process registered with prometheus_client: the counters above, and its
    own process_* and python_*."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _scrape_registry(reading: LedgerReading | None) -> CollectorRegistry:
    """One scrape's registry: every worker's samples merged (with each process's process_*
    by pid) or this process's, and the gauges read from Redis for it."""
    registry = CollectorRegistry()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(ServiceProcesses())
    else:
        registry.register(_ThisProcess())
    registry.register(LedgerGauges(reading))
    return registry


async def metrics(request: web.Request) -> web.Response:
    """Answers whether or not Redis does (service/http/ledger_gauges.py)."""
    reading = await read_ledger_if_redis_answers(request.app[REDIS])
    body = generate_latest(_scrape_registry(reading))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_metrics_app(redis: RedisClient) -> web.Application:
    """GET /metrics alone, for the metrics listener; ``redis`` is the API app's client (the
    API app closes it)."""
    # No access line for scrapes: they come every few seconds and say nothing.
    app = web.Application(handler_args={"access_log": None})
    app[REDIS] = redis
    app.router.add_get("/metrics", metrics)
    return app
