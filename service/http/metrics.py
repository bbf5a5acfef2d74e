"""Prometheus metrics: GET /metrics, on a listener of its own (WALLET_METRICS_LISTEN,
loopback by default), never on the API's address: the counters tell who is busy with what.

With several workers, each process writes its samples to PROMETHEUS_MULTIPROC_DIR
(`wallet serve` sets one up) and /metrics merges them; the metrics socket is bound once, by
the gunicorn master, and whichever worker accepts a scrape answers with the merged registry.
The ledger gauges are read from Redis at scrape time and kept as the most recent value of
any process, so they are right whichever process answers.
"""

import os
import time
from typing import cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from redis.asyncio import Redis

from service.http.errors import Handler
from service.http.logs import route_of
from service.http.state import REDIS
from service.redis import keyspace

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
STREAM_LENGTH = Gauge(
    "wallet_stream_entries", "Entries in the transactions stream", multiprocess_mode="mostrecent"
)
WRITER_LAG_ENTRIES = Gauge(
    "wallet_writer_lag_entries",
    "Stream entries not yet delivered to the writer",
    multiprocess_mode="mostrecent",
)
WRITER_PENDING = Gauge(
    "wallet_writer_pending_entries",
    "Entries delivered to the writer and not yet acknowledged",
    multiprocess_mode="mostrecent",
)
WRITER_LAG_SECONDS = Gauge(
    "wallet_writer_lag_seconds",
    "Age of the oldest transaction not yet persisted (0 when none)",
    multiprocess_mode="mostrecent",
)
DEAD_LETTERS = Gauge(
    "wallet_dead_letter_entries",
    "Stream records the writer could not store (see txn:dead-letter)",
    multiprocess_mode="mostrecent",
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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _refresh_ledger_gauges(redis: Redis) -> None:
    stream = keyspace.TXN_STREAM
    STREAM_LENGTH.set(await redis.xlen(stream))
    DEAD_LETTERS.set(await redis.xlen(keyspace.TXN_DEAD_LETTER))
    groups = cast(list[dict[str, object]], await redis.xinfo_groups(stream))
    group = next((g for g in groups if _text(g["name"]) == keyspace.WRITER_GROUP), None)
    if group is None:
        return
    pending = cast(int, group["pending"])
    WRITER_PENDING.set(pending)
    WRITER_LAG_ENTRIES.set(cast(int | None, group.get("lag")) or 0)
    # The oldest transaction that may not be persisted: the oldest pending entry, or
    # else the first entry not yet delivered.
    oldest: str | None = None
    if pending:
        summary = cast(dict[str, object], await redis.xpending(stream, keyspace.WRITER_GROUP))
        # None when the writer acknowledged everything since XINFO answered.
        oldest = None if summary["min"] is None else _text(summary["min"])
    if oldest is None:
        after = "(" + _text(group["last-delivered-id"])
        following = cast(list[tuple[bytes, object]], await redis.xrange(stream, after, count=1))
        oldest = _text(following[0][0]) if following else None
    oldest_ms = None if oldest is None else int(oldest.split("-", 1)[0])
    WRITER_LAG_SECONDS.set(0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000))


async def metrics(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    if await redis.exists(keyspace.TXN_STREAM):
        await _refresh_ledger_gauges(redis)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_metrics_app(redis: Redis) -> web.Application:
    """GET /metrics alone, for the metrics listener; ``redis`` is the API app's client (the
    API app closes it)."""
    # No access line for scrapes: they come every few seconds and say nothing.
    app = web.Application(handler_args={"access_log": None})
    app[REDIS] = redis
    app.router.add_get("/metrics", metrics)
    return app
