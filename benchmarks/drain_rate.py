"""How fast the writer drains a backlog into PostgreSQL (rows/s), by batch size.

Fills the transactions stream through the real Lua scripts with no writer running, then times the
real StreamWriter (service/ledger/writer.py) emptying it. Uses a Redis database and a
PostgreSQL database of its own, created and dropped here.

    PYTHONPATH=. python benchmarks/drain_rate.py --transactions 50000 --batch-sizes 100,500,2000
"""

import argparse
import asyncio
import time
import uuid

from redis.asyncio import Redis
from sqlalchemy import insert

from persistence.db import connect_database
from persistence.migrate import migrate
from persistence.models import User
from service.ledger.writer import StreamWriter
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.streams import ensure_consumer_group
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.postgres_admin import postgres_admin
from tests.support.redis_claim import claimed_redis_database

USERS = 100
PIPELINE = 500


async def fill(money: MoneyScripts, transactions: int) -> None:
    """Deposits and transfers in a 1:3 mix, PIPELINE at a time."""
    for start in range(0, transactions, PIPELINE):
        batch = []
        for n in range(start, min(start + PIPELINE, transactions)):
            user = n % USERS + 1
            if n % 4 == 0:
                batch.append(money.deposit(user, 1_000_000))
            else:
                batch.append(money.transfer(user, (user % USERS) + 1, 1))
        await asyncio.gather(*batch, return_exceptions=True)


async def measure(admin_dsn: str, redis_url: str, transactions: int, batch_size: int) -> float:
    name = f"drain_bench_{uuid.uuid4().hex[:8]}"
    await postgres_admin(admin_dsn, f'CREATE DATABASE "{name}"')
    server = admin_dsn.rsplit("/", 1)[0].removeprefix("postgresql://")
    settings = Settings(
        redis_url=redis_url,
        database_url=f"postgresql+asyncpg://{server}/{name}",
        writer_batch_size=batch_size,
        writer_block_ms=1,
    )
    redis = Redis.from_url(redis_url)
    engine = connect_database(settings)
    try:
        await migrate(engine)
        async with engine.begin() as connection:
            rows = [
                {"id": u, "username": f"user{u}", "password_hash": "x"} for u in range(1, USERS + 1)
            ]
            await connection.execute(insert(User), rows)
        await redis.set(keyspace.txn_seq(BUCKET), 0)  # a fresh system, as `wallet serve` starts one
        money = MoneyScripts(redis, settings)
        for user in range(1, USERS + 1):
            await money.register_user(user)
        await ensure_consumer_group(redis, BUCKET)
        await fill(money, transactions)
        backlog = await redis.xlen(keyspace.txn_stream(BUCKET))
        writer = StreamWriter(settings, redis, engine, BUCKET)
        started = time.perf_counter()
        while await writer.drain_once():
            pass
        elapsed = time.perf_counter() - started
        assert writer.stats.persisted == backlog, (writer.stats.persisted, backlog)
        return backlog / elapsed
    finally:
        await redis.delete(
            keyspace.txn_stream(BUCKET),
            keyspace.txn_seq(BUCKET),
            keyspace.txn_clock(BUCKET),
            *(keyspace.user(u) for u in range(1, USERS + 1)),
        )
        await redis.aclose()
        await engine.dispose()
        await postgres_admin(admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--batch-sizes", default="100,500,2000")
    parser.add_argument("--admin-dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    print(f"{'batch size':>10} {'rows/s':>10}")
    with claimed_redis_database(args.redis) as redis_url:
        for size in (int(s) for s in args.batch_sizes.split(",")):
            rate = await measure(args.admin_dsn, redis_url, args.transactions, size)
            print(f"{size:>10} {rate:>10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
