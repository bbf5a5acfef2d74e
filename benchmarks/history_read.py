"""How long a page of transaction history takes to read, this checkout against another, side by
side: written when histories changed from pages by id (one query, a UNION of two index scans)
to pages by the viewer's instant and id (one UNION ALL of an index scan per source; with one
bucket, as here, none on the tables of transfers across buckets), with the indexes of
migration 0007.

Two PostgreSQL databases of its own get the same rows (users, deposits and transfers, no
transfer across buckets): one at the other checkout's schema revision, one at this
checkout's. Each round runs, for each checkout in turn, a child process that reads the first
and the second page (limit 50) of every kind of history of random users through the
checkout's own ``read_history``, the tail read from a Redis database of its own (empty);
rounds alternate the order. Prints the mean microseconds per page of each and the median of
the per-round ratios.

    git worktree add /tmp/old 68e3a1d
    PYTHONPATH=. python benchmarks/history_read.py --other /tmp/old --other-revision 0006

With ``--buckets N`` it compares this checkout with itself instead: the same rows with one
bucket, against N buckets, where each transfer between users of two buckets (nearly all:
each pays the next user) is stored as its sides (a reservation, its settle, a credit), as the
writers store a transfer across buckets, and read so.

    PYTHONPATH=. python benchmarks/history_read.py --buckets 3
"""

import argparse
import asyncio
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

KINDS = (("deposit", "all"), ("transfer", "all"), ("transfer", "in"), ("transfer", "out"))
ROOT = Path(__file__).resolve().parent.parent


async def _fill(
    database_url: str, revision: str, users: int, transactions: int, buckets: int
) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.engine import Connection

    from persistence.db import connect_database
    from service.settings import Settings

    def upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", "persistence:migrations")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = connect_database(Settings(database_url=database_url))
    async with engine.begin() as connection:
        await connection.run_sync(upgrade)
        await connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash) OVERRIDING SYSTEM VALUE"
                " SELECT g, 'user' || g, 'x' FROM generate_series(1, :users) g"
            ),
            {"users": users},
        )
        # One in five a deposit; a transfer from user g % users + 1 to the next one, stored
        # as its sides when the two are in different buckets.
        rows = {"users": users, "transactions": transactions, "buckets": buckets}
        within = "(g % 5 = 0 OR (g % :users + 1) % :buckets = ((g + 1) % :users + 1) % :buckets)"
        at = "timestamptz '2026-01-01' + g * interval '1 millisecond'"
        await connection.execute(
            text(
                "INSERT INTO transactions (id, kind, from_user_id, to_user_id, amount_kopecks,"
                " created_at, from_balance_after_kopecks, to_balance_after_kopecks,"
                " stream_entry_id)"
                " SELECT g, CASE WHEN g % 5 = 0 THEN 'deposit' ELSE 'transfer' END,"
                " CASE WHEN g % 5 = 0 THEN NULL ELSE g % :users + 1 END,"
                f" (g + 1) % :users + 1, 1, {at},"
                " CASE WHEN g % 5 = 0 THEN NULL ELSE 0 END, 1, g || '-0'"
                f" FROM generate_series(1, :transactions) g WHERE {within}"
            ),
            rows,
        )
        sides = f" FROM generate_series(1, :transactions) g WHERE NOT {within}"
        for side in (
            "INSERT INTO transfer_reservations SELECT g, g % :users + 1, (g + 1) % :users + 1,"
            f" 1, {at}, 0, NULL, g || '-0'",
            "INSERT INTO transfer_ends SELECT g, 'settled', g % :users + 1, 1, NULL, NULL,"
            " g || '-1'",
            "INSERT INTO transfer_credits SELECT g, g % :users + 1, (g + 1) % :users + 1, 1,"
            f" {at} + interval '1 microsecond', 1, g || '-0'",
        ):
            await connection.execute(text(side + sides), rows)
        await connection.execute(text("ANALYZE"))
    await engine.dispose()


async def _child(
    database_url: str, redis_url: str, users: int, reads: int, seed: int, buckets: int
) -> None:
    """Runs in the checkout under test (PYTHONPATH): prints {kind: µs per page}."""
    from persistence.db import connect_database
    from service.ledger.history import read_history
    from service.redis.client import connect_redis
    from service.settings import Settings

    # Either checkout's: pages by instant (before=) or by id (before_id=).
    read: Any = read_history
    paged_by_instant = "before" in inspect.signature(read).parameters
    settings = Settings(database_url=database_url, redis_url=redis_url)
    engine, redis = connect_database(settings), connect_redis(settings)
    if buckets > 1:
        from service.redis import keyspace

        # More than one bucket is refused as a setting until holds, batches and refunds
        # cross buckets; the reads themselves are built.
        keyspace.BUCKETS = buckets
    rng = random.Random(seed)
    times: dict[str, list[float]] = {}

    async def page(user_id: int, kind: str, direction: str, after: object) -> Any:
        where = {"before" if paged_by_instant else "before_id": after}
        return await read(redis, engine, user_id=user_id, kind=kind, direction=direction,
                          limit=50, tail_max_entries=1000, **where)  # fmt: skip

    for kind, direction in KINDS:  # warm the connections and the caches
        await page(1, kind, direction, None)
    for _ in range(reads):
        user_id = rng.randint(1, users)
        for kind, direction in KINDS:
            started = time.perf_counter()
            first = await page(user_id, kind, direction, None)
            middle = time.perf_counter()
            times.setdefault(f"{kind} {direction}, first page", []).append(middle - started)
            if not first.has_more:
                continue
            postings = first.postings if paged_by_instant else first.transactions
            last = postings[-1]
            after = (last.at_us, last.txn_id) if paged_by_instant else last.txn_id
            await page(user_id, kind, direction, after)
            ended = time.perf_counter()
            times.setdefault(f"{kind} {direction}, second page", []).append(ended - middle)
    print(json.dumps({name: statistics.mean(ts) * 1e6 for name, ts in times.items()}))
    await redis.aclose()
    await engine.dispose()


def _run_child(checkout: Path, database_url: str, redis_url: str, args: argparse.Namespace,
               seed: int, buckets: int) -> dict[str, float]:  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--child", database_url, redis_url, str(args.users),
         str(args.reads), str(seed), str(buckets)],
        env={**os.environ, "PYTHONPATH": str(checkout)}, check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, help="the other checkout")
    parser.add_argument("--other-revision", help="its schema revision (alembic)")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--transactions", type=int, default=500_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=1, help="this checkout, 1 against N")
    parser.add_argument("--child", nargs=6)
    args = parser.parse_args()
    if args.child:
        database_url, redis_url, users, reads, seed, buckets = args.child
        asyncio.run(
            _child(database_url, redis_url, int(users), int(reads), int(seed), int(buckets))
        )
        return
    if (args.buckets > 1) == (args.other is not None):
        parser.error("give either --other and --other-revision, or --buckets N")
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres_admin import postgres_admin
    from tests.support.redis_claim import claimed_redis_database

    admin = os.environ.get("PGADMIN_DSN", "postgresql://root@127.0.0.1:5432/test")
    server = admin.rsplit("/", 1)[0].removeprefix("postgresql://")
    names = {side: f"history_bench_{side}_{uuid.uuid4().hex[:8]}" for side in ("other", "this")}
    urls = {side: f"postgresql+asyncpg://{server}/{name}" for side, name in names.items()}
    checkouts = {"other": args.other.resolve() if args.other else ROOT, "this": ROOT}
    revisions = {"other": args.other_revision or "head", "this": "head"}
    buckets = {"other": 1, "this": args.buckets}
    try:
        for side, name in names.items():
            asyncio.run(postgres_admin(admin, f'CREATE DATABASE "{name}"'))
            asyncio.run(
                _fill(urls[side], revisions[side], args.users, args.transactions, buckets[side])
            )
        with claimed_redis_database("redis://127.0.0.1:6379") as redis_url:
            results: dict[str, list[dict[str, float]]] = {"other": [], "this": []}
            for round_ in range(args.rounds):
                order = ("other", "this") if round_ % 2 == 0 else ("this", "other")
                for side in order:
                    child = (checkouts[side], urls[side], redis_url, args, round_, buckets[side])
                    results[side].append(_run_child(*child))
    finally:
        for name in names.values():
            asyncio.run(postgres_admin(admin, f'DROP DATABASE IF EXISTS "{name}"'))
    print(f"{args.users} users, {args.transactions} transactions, {args.reads} users read a"
          f" round, {args.rounds} rounds; µs per page, mean of the rounds")  # fmt: skip
    other_name = "other" if args.other else "1 bucket"
    this_name = "this" if args.other else f"{args.buckets} buckets"
    print(f"{'page':<34} {other_name:>9} {this_name:>9} {'÷ (median of rounds)':>22}")
    every = [*results["this"], *results["other"]]
    # A kind of page no user of some round had (a second page, with few rows) is left out.
    for name in [name for name in every[0] if all(name in r for r in every)]:
        other = statistics.mean(r[name] for r in results["other"])
        this = statistics.mean(r[name] for r in results["this"])
        ratio = statistics.median(
            t[name] / o[name] for t, o in zip(results["this"], results["other"], strict=True)
        )
        print(f"{name:<34} {other:>9.0f} {this:>9.0f} {ratio:>22.2f}")


if __name__ == "__main__":
    main()
