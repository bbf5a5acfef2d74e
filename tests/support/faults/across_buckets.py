"""What the fault tests of a cluster with several buckets (tests/faults/test_*across_buckets*.py)
share: money half-way and in transit read through the service's own cluster client, and the
checks once the load has stopped and recovery has ended what a fault left half-way."""

import asyncio
import time
from typing import cast

import asyncpg

from service.redis import keyspace
from service.redis.crossing import RESERVATION_DEADLINE_MS, CrossingLegs
from service.redis.types import RedisClient
from tests.support.faults.checks import asyncpg_dsn, ledger_ids, wait_until_in_ledger
from tests.support.faults.load import Ack, LoadStats
from tests.support.faults.procs import run_wallet

BUCKETS = 3
# Recovery ends a reservation once its deadline passed, checked every second.
RECOVERY_LIMIT_S = RESERVATION_DEADLINE_MS / 1000 + 30
POLL_S = 0.5


async def half_way(redis: RedisClient) -> list[tuple[int, int]]:
    """(bucket, txn id) of every reservation not settled or voided."""
    found = []
    for bucket in keyspace.all_buckets():
        members = cast(list[bytes], await redis.zrange(keyspace.outbound_due(bucket), 0, -1))
        found += [(bucket, int(member)) for member in members]
    return found


async def in_transit(redis: RedisClient) -> int:
    return sum([int(await redis.get(keyspace.transit(b)) or 0) for b in keyspace.all_buckets()])


async def wait_for_recovery(redis: RedisClient, since: float) -> list[tuple[int, int]]:
    """Until no reservation is half-way (recovery, beside the writer, ends each once its
    deadline has passed); those that were, every one settled: a reservation made is never
    fenced off. Nothing is in transit then."""
    left = await half_way(redis)
    while await half_way(redis):
        assert time.monotonic() - since < RECOVERY_LIMIT_S, await half_way(redis)
        await asyncio.sleep(POLL_S)
    legs = CrossingLegs(redis)
    states = [await legs.reservation(bucket, txn_id) for bucket, txn_id in left]
    assert all(r is not None and r.state == "settled" for r in states), states
    assert await in_transit(redis) == 0
    return left


async def _credited(database_url: str, txn_ids: list[int]) -> set[int]:
    """Those of the transfers across buckets whose credit and settle the ledger holds."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT c.transfer_id FROM transfer_credits c JOIN transfer_ends e"
            " ON e.transfer_id = c.transfer_id AND e.outcome = 'settled'"
            " WHERE c.transfer_id = ANY($1::bigint[])",
            txn_ids,
        )
    finally:
        await connection.close()
    return {r[0] for r in rows}


async def _ledger_deposits(database_url: str, user_ids: list[int]) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        total = await connection.fetchval(
            "SELECT COALESCE(SUM(amount_kopecks), 0) FROM transactions"
            " WHERE kind = 'deposit' AND to_user_id = ANY($1::bigint[])",
            user_ids,
        )
    finally:
        await connection.close()
    return int(total)


def crossing(acks: list[Ack], bucket: int | None = None, after: float = 0.0) -> list[Ack]:
    """The transfers across buckets among ``acks`` (touching ``bucket``, if given) that were
    acknowledged after ``after`` (time.monotonic())."""
    return [
        a
        for a in acks
        if a.from_user_id is not None
        and not keyspace.same_bucket(a.from_user_id, a.to_user_id)
        and (bucket is None or bucket in map(keyspace.bucket_of, (a.from_user_id, a.to_user_id)))
        and a.at > after
    ]


async def check_money_across_buckets(
    redis: RedisClient, acks: list[Ack], database_url: str, env: dict[str, str]
) -> None:
    """Once recovery ended everything: every 201 in the ledger (a transfer across buckets
    with its credit and settle), no id given to two 201s, reconcile clean (which waits for
    every bucket's writer), the balances of the load's users adding up to the deposits the
    ledger holds, none negative."""
    assert len({ack.txn_id for ack in acks}) == len(acks), "an id was given to two 201s"
    await wait_until_in_ledger(database_url, [a.txn_id for a in acks], 60)
    assert {a.txn_id for a in acks} <= await ledger_ids(database_url)
    code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
    assert code == 0, report
    across = [a.txn_id for a in crossing(acks)]
    assert across, "no 201 crossed buckets"
    assert await _credited(database_url, across) == set(across)
    users = sorted({u for a in acks for u in (a.from_user_id, a.to_user_id) if u is not None})
    balances = [int(await redis.hget(keyspace.user(u), "balance_kopecks") or 0) for u in users]
    assert min(balances) >= 0
    assert sum(balances) == await _ledger_deposits(database_url, users)


def check_answers(stats: LoadStats) -> None:
    assert not stats.unanswered, list(stats.unanswered)[:5]
    assert not stats.conflicting_replays, stats.conflicting_replays[:5]
    assert stats.failures["500"] == 0, dict(stats.failures)
