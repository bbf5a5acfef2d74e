"""The gauges GET /metrics reads from Redis when it is scraped: the transactions streams
(of every bucket, summed), the writers' progress through them, the dead letters and
Redis's memory; and ``wallet_redis_up``, whether Redis answered those reads.

Whichever process answers the scrape reads them, so they are right with any number of
workers. When Redis does not answer within ``REDIS_READ_TIMEOUT_S`` (stopped, restarting,
unreachable), ``wallet_redis_up`` is 0 and the gauges read from Redis are left out rather
than left at their last values: a stale lag of 0 would look like a writer keeping up. The
rest of /metrics (requests, money operations, processes) needs no Redis and is served as
ever.
"""

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.outages import is_outage
from service.redis import keyspace
from service.redis.nodes import on_every_primary
from service.redis.types import RedisClient

# Well inside Prometheus's default scrape timeout (10 s), so that a Redis that hangs costs
# the scrape its gauges, not the whole scrape.
REDIS_READ_TIMEOUT_S = 2.0
log = logging.getLogger("wallet.metrics")


@dataclass(frozen=True, slots=True)
class LedgerReading:
    """What Redis said at one scrape."""

    stream_entries: int
    dead_letter_entries: int
    # Delivered to a writer and not yet acknowledged; not yet delivered to any writer.
    writer_pending_entries: int
    writer_lag_entries: int
    # Age of the oldest transaction that may not be persisted yet (0 when none).
    writer_lag_seconds: float
    used_memory_bytes: int
    # 0: no limit.
    maxmemory_bytes: int


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class _StreamReading:
    """One bucket's stream."""

    entries: int
    dead_letter_entries: int
    pending: int
    lag_entries: int
    oldest_ms: int | None


async def _read_stream(redis: RedisClient, bucket: int) -> _StreamReading:
    stream = keyspace.txn_stream(bucket)
    stream_entries = await redis.xlen(stream)
    dead_letter_entries = await redis.xlen(keyspace.txn_dead_letter(bucket))
    group: dict[str, object] | None = None
    if await redis.exists(stream):
        groups = cast(list[dict[str, object]], await redis.xinfo_groups(stream))
        group = next((g for g in groups if _text(g["name"]) == keyspace.WRITER_GROUP), None)
    # Without the group no writer has read anything yet: every entry is still to deliver,
    # from the first on (the writer creates the group at 0).
    pending = 0 if group is None else cast(int, group["pending"])
    lag_entries = stream_entries if group is None else cast(int | None, group.get("lag")) or 0
    # The oldest transaction that may not be persisted: the oldest pending entry, or else
    # the first entry not yet delivered.
    oldest: str | None = None
    if pending:
        summary = cast(dict[str, object], await redis.xpending(stream, keyspace.WRITER_GROUP))
        # None when the writer acknowledged everything since XINFO answered.
        oldest = None if summary["min"] is None else _text(summary["min"])
    if oldest is None:
        after = "-" if group is None else "(" + _text(group["last-delivered-id"])
        following = cast(list[tuple[bytes, object]], await redis.xrange(stream, after, count=1))
        oldest = _text(following[0][0]) if following else None
    oldest_ms = None if oldest is None else int(oldest.split("-", 1)[0])
    return _StreamReading(stream_entries, dead_letter_entries, pending, lag_entries, oldest_ms)


def _fullness(memory: dict[str, Any]) -> float:
    used, limit = int(memory["used_memory"]), int(memory["maxmemory"])
    return used / limit if limit else 0.0


async def read_ledger(redis: RedisClient) -> LedgerReading:
    """The streams of every bucket, summed (the lag: the oldest of them)."""
    streams = [await _read_stream(redis, bucket) for bucket in keyspace.all_buckets()]
    # On a cluster, the fullest primary: the first to refuse money at its maxmemory.
    memory = max(
        (cast(dict[str, Any], info) for info in await on_every_primary(redis, "INFO", "memory")),
        key=_fullness,
    )
    oldest_ms = min((s.oldest_ms for s in streams if s.oldest_ms is not None), default=None)
    return LedgerReading(
        stream_entries=sum(s.entries for s in streams),
        dead_letter_entries=sum(s.dead_letter_entries for s in streams),
        writer_pending_entries=sum(s.pending for s in streams),
        writer_lag_entries=sum(s.lag_entries for s in streams),
        writer_lag_seconds=0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000),
        used_memory_bytes=cast(int, memory["used_memory"]),
        maxmemory_bytes=cast(int, memory["maxmemory"]),
    )


async def read_ledger_if_redis_answers(redis: RedisClient) -> LedgerReading | None:
    """``read_ledger``, or None when Redis is out (logged); a bug still raises."""
    try:
        return await asyncio.wait_for(read_ledger(redis), REDIS_READ_TIMEOUT_S)
    except Exception as exc:
        if not (isinstance(exc, TimeoutError) or is_outage(exc)):
            raise
        log.warning("metrics: Redis did not answer, its gauges are left out: %r", exc)
        return None


class LedgerGauges(Collector):
    """``wallet_redis_up``, and the gauges of one reading when there is one."""

    def __init__(self, reading: LedgerReading | None) -> None:
        self._reading = reading

    def collect(self) -> Iterator[Metric]:
        reading = self._reading
        yield GaugeMetricFamily(
            "wallet_redis_up",
            "1 when Redis answered this scrape's reads; 0 when not, and the gauges read from"
            " Redis are left out",
            value=0 if reading is None else 1,
        )
        if reading is None:
            return
        gauges = (
            ("wallet_stream_entries", "Entries in the transactions stream", reading.stream_entries),
            (
                "wallet_writer_lag_entries",
                "Stream entries not yet delivered to the writer",
                reading.writer_lag_entries,
            ),
            (
                "wallet_writer_pending_entries",
                "Entries delivered to the writer and not yet acknowledged",
                reading.writer_pending_entries,
            ),
            (
                "wallet_writer_lag_seconds",
                "Age of the oldest transaction not yet persisted (0 when none)",
                reading.writer_lag_seconds,
            ),
            (
                "wallet_dead_letter_entries",
                "Stream records the writer could not store (see txn:dead-letter:{b<bucket>})",
                reading.dead_letter_entries,
            ),
            (
                "wallet_redis_used_memory_bytes",
                "Memory Redis uses (INFO memory used_memory)",
                reading.used_memory_bytes,
            ),
            (
                "wallet_redis_maxmemory_bytes",
                "Redis's maxmemory (0: no limit); at it, with noeviction, money stops moving",
                reading.maxmemory_bytes,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
