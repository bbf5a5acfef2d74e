"""`wallet writer`'s own listener (WALLET_WRITER_METRICS_LISTEN, loopback by default):
GET /metrics, what the writer knows of its own work, and GET /healthz, the process answers
(the compose healthcheck).

The counters are the writer's WriterStats (service/ledger/writer.py), read at scrape time.
What Redis knows of the ledger's progress (the stream's length, the entries not yet
delivered or acknowledged, the age of the oldest transaction not yet persisted, the dead
letters) is on the API's /metrics (service/http/ledger_gauges.py), which reads it from
Redis whether or not a writer runs: a dead writer reports nothing.
"""

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.http.errors import json_response
from service.ledger.writer import WriterStats


class WriterCollector(Collector):
    """The writer's counters and times, as they are when scraped."""

    def __init__(self, stats: WriterStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        counters = (
            ("wallet_writer_batches", "Batches stored and acknowledged", stats.batches),
            (
                "wallet_writer_entries_persisted",
                "Stream entries stored in the ledger (or found stored already) and acknowledged",
                stats.persisted,
            ),
            (
                "wallet_writer_dead_letters",
                "Stream entries the ledger could not take, copied to txn:dead-letter",
                stats.dead_lettered,
            ),
            ("wallet_writer_rows_inserted", "Ledger rows inserted", stats.rows_inserted),
            (
                "wallet_writer_rows_skipped",
                "Ledger rows skipped as stored already (an entry delivered again)",
                stats.rows_skipped,
            ),
            (
                "wallet_writer_retries",
                "Failed attempts at a Redis or PostgreSQL step, each followed by a backoff",
                stats.retries,
            ),
        )
        for name, documentation, count in counters:
            yield CounterMetricFamily(name, documentation, value=count)
        gauges = (
            (
                "wallet_writer_last_batch_lag_seconds",
                "Age of the last batch's oldest entry when the batch was acknowledged",
                stats.last_batch_lag_ms / 1000,
            ),
            (
                "wallet_writer_last_batch_timestamp_seconds",
                "Unix time of the last batch acknowledged (0 before the first)",
                stats.last_batch_at_s,
            ),
            (
                "wallet_writer_last_read_timestamp_seconds",
                "Unix time of the last read of the stream Redis answered; a read ends within"
                " WALLET_WRITER_BLOCK_MS when idle (0 before the first)",
                stats.last_read_at_s,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)


def _registry(stats: WriterStats) -> CollectorRegistry:
    """The writer's counters and this process's own (process_*, python_*). A registry of
    its own: the writer is one process whatever PROMETHEUS_MULTIPROC_DIR says."""
    registry = CollectorRegistry()
    for collector in (WriterCollector(stats), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def create_writer_metrics_app(stats: WriterStats) -> web.Application:
    registry = _registry(stats)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    # No access line for scrapes and health checks: they come every few seconds.
    app = web.Application(handler_args={"access_log": None})
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


@asynccontextmanager
async def serving_writer_metrics(stats: WriterStats, sock: socket.socket) -> AsyncIterator[None]:
    """Serves ``create_writer_metrics_app`` on ``sock`` (bound by the caller, so that a taken
    address stops the command before anything starts)."""
    runner = web.AppRunner(create_writer_metrics_app(stats))
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield
    finally:
        await runner.cleanup()
