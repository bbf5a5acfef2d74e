import re
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from service.http.ledger_gauges import read_ledger
from service.redis import keyspace
from service.redis.keyspace import WRITER_GROUP
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.helpers import persist
from tests.support.http_helpers import Client, new_user


def sample(text: str, name: str, default: float | None = None, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}\{{{label_text}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    if match is None and default is not None:
        return default
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_requests_money_and_writer_lag(
    client: Client,
    metrics_client: Client,
    settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
) -> None:
    for bucket in keyspace.all_buckets():
        await ensure_consumer_group(redis_client, bucket)
    alice = await new_user(client, "alice", deposit_kopecks=100)
    bob = await new_user(client, "bob")
    before = await (await metrics_client.get("/metrics")).text()
    ok_before = sample(
        before, "wallet_money_operations_total", default=0, operation="transfer", result="ok"
    )
    await alice.post(client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 60})
    await alice.post(client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 60})
    response = await metrics_client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert sample(text, "wallet_money_operations_total", operation="transfer", result="ok") == (
        ok_before + 1
    )
    assert (
        sample(
            text, "wallet_money_operations_total", operation="transfer", result="insufficient_funds"
        )
        >= 1
    )
    assert sample(
        text, "wallet_http_requests_total",
        route="/api/balance/transfer/", method="POST", status="409",
    ) >= 1  # fmt: skip
    assert sample(text, "wallet_redis_up") == 1
    # A deposit and a transfer: one entry each, or three for a transfer across buckets.
    streams = [keyspace.txn_stream(b) for b in keyspace.all_buckets()]
    entries = sum([await redis_client.xlen(stream) for stream in streams])
    assert entries == (2 if keyspace.same_bucket(alice.id, bob.id) else 4)
    assert sample(text, "wallet_stream_entries") == entries
    assert sample(text, "wallet_writer_lag_entries") == entries
    assert sample(text, "wallet_writer_lag_seconds") >= 0
    assert sample(text, "wallet_redis_used_memory_bytes") > 0
    assert sample(text, "wallet_redis_maxmemory_bytes") >= 0
    await persist(redis_client, db_engine)
    text = await (await metrics_client.get("/metrics")).text()
    assert sample(text, "wallet_writer_lag_entries") == 0
    assert sample(text, "wallet_writer_pending_entries") == 0
    assert sample(text, "wallet_writer_lag_seconds") == 0
    assert sample(text, "wallet_dead_letter_entries") == 0


async def test_methods_the_api_does_not_use_share_one_series(
    client: Client, metrics_client: Client
) -> None:
    for method in ("PROPFIND", "MKCOL", "TRACE"):
        response = await client.request(method, "/api/balance/")
        assert response.status in (404, 405), method
    text = await (await metrics_client.get("/metrics")).text()
    for method in ("PROPFIND", "MKCOL", "TRACE"):
        assert method not in text
    assert sample(
        text, "wallet_http_requests_total", route="unmatched", method="OTHER", status="405"
    ) >= 3  # fmt: skip


async def test_before_any_writer_every_entry_counts_as_lag(
    client: Client, metrics_client: Client, redis_client: RedisClient
) -> None:
    """No consumer group (Redis lost its data and the API wrote the stream anew before a
    writer came back): the writer will read from the first entry on, so every entry is
    lag, as old as the first."""
    await new_user(client, "alice", deposit_kopecks=100)
    await new_user(client, "bob", deposit_kopecks=100)
    for bucket in keyspace.all_buckets():
        if await redis_client.exists(keyspace.txn_stream(bucket)):
            await redis_client.xgroup_destroy(keyspace.txn_stream(bucket), WRITER_GROUP)
    text = await (await metrics_client.get("/metrics")).text()
    assert sample(text, "wallet_writer_lag_entries") == sample(text, "wallet_stream_entries") == 2
    assert sample(text, "wallet_writer_pending_entries") == 0
    assert sample(text, "wallet_writer_lag_seconds") > 0


class RacingRedis:
    """XINFO still counts a pending entry; XPENDING, a moment later, finds none."""

    def __init__(self, next_entry_ms: int | None) -> None:
        self._next = next_entry_ms

    async def xlen(self, key: str) -> int:
        return 3

    async def exists(self, key: str) -> int:
        return 1

    async def execute_command(self, command: str, section: str) -> dict[str, object]:
        assert (command, section) == ("INFO", "memory")
        return {"used_memory": 1_000_000, "maxmemory": 0}

    async def xinfo_groups(self, key: str) -> list[dict[str, object]]:
        return [{"name": b"ledger-writer", "pending": 1, "lag": 0, "last-delivered-id": b"5-0"}]

    async def xpending(self, key: str, group: str) -> dict[str, object]:
        return {"pending": 0, "min": None, "max": None, "consumers": []}

    async def xrange(self, key: str, start: str, count: int) -> list[tuple[bytes, object]]:
        return [] if self._next is None else [(f"{self._next}-0".encode(), {})]


async def test_lag_survives_the_writer_acknowledging_between_two_reads() -> None:
    reading = await read_ledger(RacingRedis(None))  # type: ignore[arg-type]
    assert reading.writer_lag_seconds == 0.0
    two_seconds_ago_ms = int((time.time() - 2) * 1000)
    reading = await read_ledger(RacingRedis(two_seconds_ago_ms))  # type: ignore[arg-type]
    assert 1.5 < reading.writer_lag_seconds < 10
