"""Helpers for the writer and replay tests: users, transactions, the ledger's rows and the
consumer group's pending entries."""

import itertools
from typing import Any, cast

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransaction, User
from service.redis import keyspace
from service.redis.keyspace import WRITER_GROUP
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import StreamEntries

_keys = itertools.count()


def writer_settings(settings: Settings, **update: Any) -> Settings:
    """Fast settings for a test writer; model_copy skips validation, so limits can go low."""
    values: dict[str, Any] = {
        "writer_block_ms": 20,
        "writer_consumer_name": "writer-a",
        "writer_retry_max_backoff_ms": 20,
    }
    values.update(update)
    return settings.model_copy(update=values)


async def create_users(engine: AsyncEngine, money: MoneyScripts, count: int) -> list[int]:
    """Users 1..count in PostgreSQL (the ledger's foreign keys) and with a wallet in Redis."""
    ids = list(range(1, count + 1))
    async with engine.begin() as connection:
        await connection.execute(
            insert(User), [{"id": i, "username": f"user{i}", "password_hash": "x"} for i in ids]
        )
    for user_id in ids:
        await money.register_user(user_id)
    return ids


async def some_transactions(money: MoneyScripts, users: list[int], count: int) -> list[int]:
    """``count`` transactions among ``users``: a deposit to each first, then transfers."""
    txn_ids = []
    for i in range(count):
        if i < len(users):
            key = f"key-{next(_keys)}"
            accepted = await money.deposit(users[i], 1_000_000, idempotency_key=key)
        else:
            sender = users[i % len(users)]
            recipient = users[(i + 1) % len(users)]
            accepted = await money.transfer(sender, recipient, 100 + i)
        txn_ids.append(accepted.txn_id)
    return txn_ids


async def ledger(engine: AsyncEngine) -> dict[int, dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(LedgerTransaction.__table__))
        return {row.id: dict(row._mapping) for row in rows}


async def ledger_count(engine: AsyncEngine) -> tuple[int, int]:
    """Rows and distinct transaction ids."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*), count(DISTINCT id) FROM transactions")
        )
        total, distinct = result.one()
        return int(total), int(distinct)


async def pending(redis: RedisClient) -> dict[str, int]:
    """Pending entries per consumer."""
    summary = await redis.xpending(keyspace.txn_stream(BUCKET), WRITER_GROUP)
    return {c["name"].decode(): c["pending"] for c in summary["consumers"]}


async def xadd(redis: RedisClient, fields: dict[str, str]) -> str:
    """Appends an entry by hand, as no script would."""
    entry_id = await redis.xadd(keyspace.txn_stream(BUCKET), cast(dict[Any, Any], fields))
    return cast(bytes, entry_id).decode()


async def dead_letters(redis: RedisClient) -> dict[str, dict[bytes, bytes]]:
    """The dead-letter stream's records by the entry id they stand for."""
    records = cast(StreamEntries, await redis.xrange(keyspace.txn_dead_letter(BUCKET)))
    return {fields[b"entry_id"].decode(): fields for _, fields in records}
