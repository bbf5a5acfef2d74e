"""Small readers of Redis state shared by the tests."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from redis.asyncio import RedisCluster
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import User
from service.domain.refusals import Refusal, Refused
from service.domain.transactions import Transaction
from service.ledger.writer import StreamWriter
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.nodes import on_every_primary
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.redis_claim import empty_but_claim

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def stream_entries(redis: RedisClient) -> StreamEntries:
    return cast(StreamEntries, await redis.xrange(keyspace.txn_stream(BUCKET)))


async def stream_fields(redis: RedisClient) -> list[dict[str, str]]:
    """The stream as the scripts wrote it, field by field."""
    entries = await stream_entries(redis)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def stream_transactions(redis: RedisClient) -> list[Transaction]:
    return [Transaction.from_stream_fields(fields) for _, fields in await stream_entries(redis)]


async def balance(redis: RedisClient, user_id: int) -> int:
    raw = await redis.hget(keyspace.user(user_id), "balance_kopecks")
    assert raw is not None, f"user {user_id} has no wallet"
    return int(cast(bytes, raw))


async def snapshot(redis: RedisClient) -> dict[bytes, Any]:
    """Every key with its value: to prove that a refused call wrote nothing."""
    state: dict[bytes, Any] = {}
    for key in sorted(cast(list[bytes], await redis.keys("*"))):
        kind = cast(bytes, await redis.type(key)).decode()
        if kind == "string":
            state[key] = await redis.get(key)
        elif kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "stream":
            state[key] = await redis.xrange(key)
        elif kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state[key] = await redis.smembers(key)
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return state


async def snapshot_of_data(redis: RedisClient) -> dict[bytes, Any]:
    """``snapshot`` without the throttling counts: a refused request changes no data, but a
    404 or a failed login is counted, by design."""
    state = await snapshot(redis)
    return {key: value for key, value in state.items() if not key.startswith(b"throttle:")}


async def persist(redis: RedisClient, engine: AsyncEngine, max_batches: int | None = None) -> int:
    """Runs the real stream writer of each bucket until its stream is drained (or for
    max_batches per bucket)."""
    settings = Settings(writer_block_ms=1, writer_batch_size=500)
    persisted = 0
    for bucket in keyspace.all_buckets():
        await ensure_consumer_group(redis, bucket)
        writer = StreamWriter(settings, redis, engine, bucket)
        batches = 0
        while max_batches is None or batches < max_batches:
            handled = await writer.drain_once()
            if handled == 0:
                break
            persisted += handled
            batches += 1
    return persisted


async def next_txn_id_epoch(engine: AsyncEngine) -> int:
    """The next epoch of transaction ids PostgreSQL will hand out (txn_id_epoch)."""
    async with engine.connect() as connection:
        return int(
            (await connection.execute(text("SELECT next_epoch FROM txn_id_epoch"))).scalar_one()
        )


async def add_users(
    engine: AsyncEngine, money: MoneyScripts, user_ids: list[int], wallets: bool = True
) -> None:
    """PostgreSQL users with these ids and, unless wallets is False, their Redis wallets."""
    async with engine.begin() as connection:
        await connection.execute(
            insert(User),
            [{"id": u, "username": f"user{u}", "password_hash": "x"} for u in user_ids],
        )
    if wallets:
        for user_id in user_ids:
            await money.register_user(user_id)


async def lose_redis(redis: RedisClient) -> None:
    """Every key of this run's Redis goes, but the run's claim (a cluster is the run's own:
    no claim): Redis lost its data."""
    if isinstance(redis, RedisCluster):
        await on_every_primary(redis, "FLUSHALL")
    else:
        await empty_but_claim(redis)


async def fresh_redis(redis: RedisClient) -> None:
    """This run's Redis database as a freshly started system has it: no data, and the id
    counter at 0, as `wallet serve` sets it at start."""
    await lose_redis(redis)
    await redis.set(keyspace.txn_seq(BUCKET), 0)


async def fresh_database(engine: AsyncEngine) -> None:
    """No users, no transactions, no holds, no count of buckets recorded; epoch 0 of the
    transaction ids handed out, to the counter fresh_redis starts in bucket 0 (as `wallet
    serve` takes it on a new system)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "TRUNCATE hold_events, holds, transactions, users, deployment,"
                " transfer_reservations, transfer_credits, transfer_ends, txn_id_epoch_buckets"
                " RESTART IDENTITY CASCADE"
            )
        )
        await connection.execute(text("UPDATE txn_id_epoch SET next_epoch = 1"))
        await connection.execute(text("INSERT INTO txn_id_epoch_buckets VALUES (0, 0)"))


@contextmanager
def refusing(refusal: Refusal) -> Iterator[pytest.ExceptionInfo[Refused]]:
    """Like ``pytest.raises(Refused)``, for one entry of the catalog."""
    with pytest.raises(Refused) as info:
        yield info
    assert info.value.refusal is refusal, info.value.refusal
