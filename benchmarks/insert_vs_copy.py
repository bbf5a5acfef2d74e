"""Measures what docs/ledger.md reports; not part of the test suite.

Three ways to store a batch of stream records, each batch one transaction as in the writer:

- ``unnest``: what the writer does (persistence/ledger_insert.py): one
  ``INSERT ... SELECT * FROM unnest(<one array per column>) ON CONFLICT (id) DO NOTHING``;
- ``values``: one multi-row ``INSERT ... VALUES (...), (...) ON CONFLICT (id) DO NOTHING``;
- ``copy``: ``COPY`` into a temporary staging table (asyncpg ``copy_records_to_table`` on the
  raw connection), then ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``.

They run in turn in one process on the same data, in a scratch PostgreSQL database that is
created and dropped here.

``--stream-memory N`` instead runs N real deposits and transfers through the Lua scripts in a
claimed Redis database and prints ``MEMORY USAGE txn:stream`` per entry.

    python benchmarks/insert_vs_copy.py --rows 50000 --batch 500 --rounds 3
    python benchmarks/insert_vs_copy.py --stream-memory 100000 [--idem-share 0.5]
"""

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from persistence.ledger_insert import insert_transactions
from persistence.migrate import migrate
from persistence.models import LedgerTransaction, User
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.postgres_admin import postgres_admin
from tests.support.redis_claim import claimed_redis_database

POSTGRES_ADMIN_DSN = os.environ.get("WALLET_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
REDIS_HOST_URL = os.environ.get("WALLET_TEST_REDIS", "redis://127.0.0.1:6379")
USERS = 1_000

Inserter = Callable[[AsyncConnection, Sequence[tuple[str, Transaction]]], Awaitable[int]]

_COLUMNS = [
    "id",
    "kind",
    "from_user_id",
    "to_user_id",
    "amount_kopecks",
    "created_at",
    "from_balance_after_kopecks",
    "to_balance_after_kopecks",
    "idempotency_key",
    "stream_entry_id",
]


async def values_insert(
    connection: AsyncConnection, entries: Sequence[tuple[str, Transaction]]
) -> int:
    """Measured and not kept: SQLAlchemy compiles 10 bind parameters per row, every batch."""
    rows = sorted((txn.ledger_row(entry_id) for entry_id, txn in entries), key=lambda r: r["id"])
    statement = insert(LedgerTransaction).values(rows).on_conflict_do_nothing(index_elements=["id"])
    return (await connection.execute(statement)).rowcount


async def copy_insert(
    connection: AsyncConnection, entries: Sequence[tuple[str, Transaction]]
) -> int:
    """Measured and not kept."""
    # The first statement through SQLAlchemy also opens the caller's transaction.
    await connection.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS transactions_staging"
        " (LIKE transactions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    records = [tuple(txn.ledger_row(entry_id)[c] for c in _COLUMNS) for entry_id, txn in entries]
    await driver.copy_records_to_table("transactions_staging", records=records, columns=_COLUMNS)
    status: str = await driver.execute(
        "INSERT INTO transactions SELECT * FROM transactions_staging ORDER BY id"
        " ON CONFLICT (id) DO NOTHING"
    )
    return int(status.rsplit(" ", 1)[1])


def synthetic_transactions(count: int, seed: int = 7) -> list[tuple[str, Transaction]]:
    rng = random.Random(seed)
    base_us = 1_700_000_000_000_000
    entries = []
    for txn_id in range(1, count + 1):
        created_at_us = base_us + txn_id * 137
        to_user = rng.randint(1, USERS)
        key = str(uuid.UUID(int=rng.getrandbits(128))) if rng.random() < 0.5 else None
        if rng.random() < 0.3:
            txn = Transaction(
                txn_id, "deposit", None, to_user, rng.randint(1, 10**7), created_at_us,
                None, rng.randint(0, 10**9), key,
            )  # fmt: skip
        else:
            from_user = rng.randint(1, USERS - 1)
            from_user += from_user >= to_user
            txn = Transaction(
                txn_id, "transfer", from_user, to_user, rng.randint(1, 10**6), created_at_us,
                rng.randint(0, 10**9), rng.randint(0, 10**9), key,
            )  # fmt: skip
        entries.append((f"{created_at_us // 1000}-{txn_id % 7}", txn))
    return entries


async def _timed_load(
    engine: AsyncEngine, inserter: Inserter, entries: list[tuple[str, Transaction]], batch: int
) -> tuple[float, int]:
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE transactions"))
    inserted = 0
    started = time.perf_counter()
    for start in range(0, len(entries), batch):
        async with engine.begin() as connection:
            inserted += await inserter(connection, entries[start : start + batch])
    elapsed = time.perf_counter() - started
    # Everything again: every row conflicts, as on a redelivered batch.
    again_started = time.perf_counter()
    for start in range(0, len(entries), batch):
        async with engine.begin() as connection:
            assert await inserter(connection, entries[start : start + batch]) == 0
    again = time.perf_counter() - again_started
    assert inserted == len(entries), (inserted, len(entries))
    return elapsed, round(again * 1000)


async def insert_vs_copy(rows: int, batch: int, rounds: int) -> None:
    name = f"wallet_bench_{uuid.uuid4().hex[:12]}"
    await postgres_admin(POSTGRES_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    server = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].removeprefix("postgresql://")
    engine = create_async_engine(f"postgresql+asyncpg://{server}/{name}", pool_size=1)
    try:
        await migrate(engine)
        async with engine.begin() as connection:
            await connection.execute(
                insert(User),
                [
                    {"id": i, "username": f"user{i}", "password_hash": "x"}
                    for i in range(1, USERS + 1)
                ],
            )
        entries = synthetic_transactions(rows)
        methods: dict[str, Inserter] = {
            "unnest": insert_transactions,
            "values": values_insert,
            "copy": copy_insert,
        }
        results: dict[str, list[float]] = {m: [] for m in methods}
        conflicts: dict[str, list[int]] = {m: [] for m in methods}
        for inserter in methods.values():  # warm-up
            await _timed_load(engine, inserter, entries[: batch * 4], batch)
        for round_no in range(rounds):
            order = list(methods)[round_no % 3 :] + list(methods)[: round_no % 3]
            for method in order:
                elapsed, again_ms = await _timed_load(engine, methods[method], entries, batch)
                results[method].append(elapsed)
                conflicts[method].append(again_ms)
                print(
                    f"round {round_no + 1} {method:6} {elapsed:6.2f} s"
                    f"  {rows / elapsed:8.0f} rows/s  all-conflict re-run {again_ms} ms"
                )
        print(f"\n{rows} rows in batches of {batch}, {rounds} rounds, median:")
        for method, times in results.items():
            median = statistics.median(times)
            print(
                f"  {method:6} {median:6.2f} s  {rows / median:8.0f} rows/s"
                f"  {median / (rows / batch) * 1000:5.2f} ms/batch"
                f"  all-conflict re-run {statistics.median(conflicts[method]):.0f} ms"
            )
    finally:
        await engine.dispose()
        await postgres_admin(POSTGRES_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def stream_memory(redis_url: str, entries: int, idem_share: float) -> None:
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=64)
    client = Redis(connection_pool=pool)
    try:
        await client.set(
            keyspace.txn_seq(BUCKET), 0
        )  # a fresh system, as `wallet serve` starts one
        money = MoneyScripts(client, Settings())
        rng = random.Random(7)
        for user_id in range(1, USERS + 1):
            await money.register_user(user_id)
        await asyncio.gather(*(money.deposit(u, 10**9) for u in range(1, USERS + 1)))

        async def one() -> None:
            key = str(uuid.uuid4()) if rng.random() < idem_share else None
            to_user = rng.randint(1, USERS)
            if rng.random() < 0.3:
                await money.deposit(to_user, rng.randint(1, 10**7), key)
            else:
                await money.transfer(to_user % USERS + 1, to_user, rng.randint(1, 10**5), key)

        remaining = entries - USERS
        while remaining > 0:
            step = min(200, remaining)
            await asyncio.gather(*(one() for _ in range(step)))
            remaining -= step
        length = await client.xlen(keyspace.txn_stream(BUCKET))
        usage = cast(int, await client.memory_usage(keyspace.txn_stream(BUCKET), samples=0))
        print(
            f"{length} entries ({idem_share:.0%} with a 36-character idempotency key):"
            f" MEMORY USAGE {usage} bytes, {usage / length:.1f} bytes/entry,"
            f" {usage / length * 1e6 / 2**20:.0f} MiB per million entries"
        )
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-memory", type=int, metavar="ENTRIES", default=0)
    parser.add_argument("--idem-share", type=float, default=0.5, help="with --stream-memory")
    args = parser.parse_args()
    if args.stream_memory:
        with claimed_redis_database(REDIS_HOST_URL) as redis_url:
            asyncio.run(stream_memory(redis_url, args.stream_memory, args.idem_share))
    else:
        asyncio.run(insert_vs_copy(args.rows, args.batch, args.rounds))


if __name__ == "__main__":
    main()
