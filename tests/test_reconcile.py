"""persistence/reconcile.py against real Redis and PostgreSQL."""

import asyncio
import random

import pytest
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransaction
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.refusals import INSUFFICIENT_FUNDS, Refused
from service.ledger import reconcile as reconcile_module
from service.ledger.reconcile import CounterBehind, Drift, format_report, reconcile
from service.redis import keyspace
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import add_users, balance, persist


async def money_mix(money: MoneyScripts) -> None:
    """Deposits and transfers among users 1..5 (user 5 never gets any)."""
    await money.deposit(1, 100_000)
    await money.deposit(2, 5_000, idempotency_key="d-2")
    await money.transfer(1, 2, 2_500)
    await money.transfer(2, 3, 7_000, idempotency_key="t-2")
    await money.transfer(3, 4, 1)
    await money.deposit(4, 99)
    await money.transfer(1, 4, 12_345)


async def test_clean_after_persisted_deposits_and_transfers(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1, 2, 3, 4, 5])
    await money_mix(money)
    assert await persist(redis_client, db_engine) == 7
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.ok, format_report(report)
    assert report.users_checked == 5
    assert report.through_txn_id == 7
    assert (report.drifts, report.missing_in_redis, report.missing_in_ledger) == ([], [], [])
    assert not report.writer_behind
    assert format_report(report).startswith("reconcile OK: 5 users checked")


async def test_reports_a_redis_balance_that_drifted(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1, 2, 3, 4, 5])
    await money_mix(money)
    await persist(redis_client, db_engine)
    before = await balance(redis_client, 2)
    await redis_client.hincrby(keyspace.user(2), "balance_kopecks", 1)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert not report.ok
    assert report.drifts == [Drift(2, before + 1, before)]
    text = format_report(report)
    assert text.startswith("reconcile FAILED")
    assert f"user 2: Redis {before + 1} kopecks" in text
    assert f"ledger {before} kopecks" in text
    assert "difference +1 kopecks" in text


async def test_reports_a_transaction_missing_from_the_ledger(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1, 2, 3, 4, 5])
    await money_mix(money)
    await persist(redis_client, db_engine)
    async with db_engine.begin() as connection:  # transfer 3: 1 -> 2, 2_500
        await connection.execute(delete(LedgerTransaction).where(LedgerTransaction.id == 3))
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    one, two = await balance(redis_client, 1), await balance(redis_client, 2)
    assert report.drifts == [Drift(1, one, one + 2_500), Drift(2, two, two - 2_500)]
    assert not report.ok
    assert "difference -2500 kopecks" in format_report(report)


async def test_reports_users_and_wallets_missing_on_either_side(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1, 2])
    await add_users(db_engine, money, [3], wallets=False)
    await money.register_user(42)  # a wallet with no PostgreSQL user
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert (report.missing_in_redis, report.missing_in_ledger) == ([3], [42])
    assert report.users_checked == 2
    assert not report.ok
    text = format_report(report)
    assert "1 users have no Redis wallet: 3" in text
    assert "1 Redis wallets have no PostgreSQL user: 42" in text


async def test_writer_behind_until_the_transaction_is_persisted(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1, 2])
    await money.deposit(1, 500)
    await persist(redis_client, db_engine)
    await money.transfer(1, 2, 200)  # in the stream, not in the ledger
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)
    assert report.writer_behind
    assert report.first_unpersisted_txn_id == 2
    assert report.drifts == []  # not compared: it would be a false drift
    assert not report.ok
    assert "writer behind: transaction 2" in format_report(report)
    await persist(redis_client, db_engine)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)
    assert report.ok, format_report(report)


async def test_waits_for_a_writer_that_catches_up(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1])
    await money.deposit(1, 500)

    async def late_writer() -> None:
        await asyncio.sleep(0.3)
        await persist(redis_client, db_engine)

    writer = asyncio.create_task(late_writer())
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=10)
    await writer
    assert report.ok, format_report(report)
    assert report.users_checked == 1


async def test_reports_a_transaction_counter_below_the_ledger(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    await add_users(db_engine, money, [1])
    for _ in range(3):
        await money.deposit(1, 10)
    await persist(redis_client, db_engine)
    await redis_client.set(keyspace.txn_seq(BUCKET), 1)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.counters_behind_ledger == [CounterBehind(BUCKET, 1, 3)]
    assert not report.ok
    assert "new transaction ids would collide" in format_report(report)


async def test_no_false_drift_while_money_keeps_moving(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    money: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile_module, "BATCH_SIZE", 7)  # many batches, many snapshots
    user_ids = list(range(1, 41))
    await add_users(db_engine, money, user_ids)
    for user_id in user_ids:
        await money.deposit(user_id, 1_000)
    await persist(redis_client, db_engine)
    stop = asyncio.Event()
    moved = 0

    async def payments() -> None:
        nonlocal moved
        rng = random.Random(7)
        while not stop.is_set():
            sender, recipient = rng.sample(user_ids, 2)
            try:
                await money.transfer(sender, recipient, rng.randint(1, 300))
            except Refused as refusal:
                if refusal.refusal is not INSUFFICIENT_FUNDS:
                    raise
                await money.deposit(sender, 500)
            moved += 1

    async def writer() -> None:
        while not stop.is_set():
            await persist(redis_client, db_engine)
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(payments()), asyncio.create_task(writer())]
    try:
        reports = []
        for _ in range(3):
            reports.append(await reconcile(redis_client, db_engine, wait_for_writer_s=5))
            assert moved > 0
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    for report in reports:
        assert report.ok, format_report(report)
        assert report.users_checked == len(user_ids)
    # The money moved during every run: each run compared at a later transaction id.
    assert reports[0].through_txn_id < reports[1].through_txn_id < reports[2].through_txn_id
    await persist(redis_client, db_engine)
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok


# Several buckets: user u is in bucket u % 3, with a counter in an epoch of its own.


async def test_several_buckets_are_compared_each_at_its_own_point(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    money: MoneyScripts,
    settings: Settings,
    several_buckets: int,
) -> None:
    user_ids = list(range(1, 10))
    await add_users(db_engine, money, user_ids)
    for user_id in user_ids:
        await money.deposit(user_id, 1_000 * user_id)
    await money.transfer(4, 1, 300)  # bucket 1
    await money.transfer(5, 8, 200)  # bucket 2
    await money.transfer(6, 3, 100, idempotency_key="t-6")  # bucket 0
    await HoldScripts(redis_client, settings).create(7, 4, 50, expires_in_s=3_600)  # bucket 1
    assert await persist(redis_client, db_engine) == 13
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.ok, format_report(report)
    assert report.users_checked == 9
    # Each bucket counts from its own epoch: the last compared at is bucket 2's.
    assert report.through_txn_id > 2 * TXN_IDS_PER_EPOCH

    await redis_client.hincrby(keyspace.user(8), "balance_kopecks", 1)
    await redis_client.hincrby(keyspace.user(7), "held_kopecks", -1)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.drifts == [Drift(8, 8_200 + 1, 8_200)]
    assert report.held_drifts == [Drift(7, 49, 50)]


async def test_several_buckets_writer_behind_in_one_of_them(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, several_buckets: int
) -> None:
    await add_users(db_engine, money, [1, 2, 4, 5])
    await money.deposit(1, 500)
    await money.deposit(5, 500)
    await persist(redis_client, db_engine)
    await money.deposit(4, 7)  # bucket 1
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)
    assert report.writer_behind
    assert report.first_unpersisted_txn_id is not None
    assert report.first_unpersisted_txn_id // TXN_IDS_PER_EPOCH == await _epoch_of_bucket(
        redis_client, 1
    )
    await persist(redis_client, db_engine)
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)).ok


async def test_several_buckets_a_counter_set_back_into_stored_ids(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, several_buckets: int
) -> None:
    await add_users(db_engine, money, [1, 2, 3])
    for user_id in (1, 2, 3):
        await money.deposit(user_id, 10)
        await money.deposit(user_id, 10)
    await persist(redis_client, db_engine)
    seq = int(await redis_client.get(keyspace.txn_seq(2)) or 0)
    await redis_client.set(keyspace.txn_seq(2), seq - 1)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.counters_behind_ledger == [CounterBehind(2, seq - 1, seq)]
    assert f"txn:seq of bucket 2 is {seq - 1} but the ledger holds transaction {seq}" in (
        format_report(report)
    )
    # A counter in a later epoch than the stored ids of its bucket collides with none.
    await redis_client.set(keyspace.txn_seq(2), seq + 7 * TXN_IDS_PER_EPOCH)
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok


async def _epoch_of_bucket(redis: RedisClient, bucket: int) -> int:
    return int(await redis.get(keyspace.txn_seq(bucket)) or 0) // TXN_IDS_PER_EPOCH
