"""`wallet reconcile` with holds and refunds: held, incoming and refunded totals against the
ledger, clean after a mixed workload (tests/support/mixed_workload.py) and while money keeps
moving, and each kind of drift reported. Real Redis and PostgreSQL."""

import asyncio
import random

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransaction
from service.domain.refusals import Refused
from service.ledger import reconcile as reconcile_module
from service.ledger.reconcile import Drift, OverRefund, RefundedDrift, format_report, reconcile
from service.redis import keyspace
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import add_users, persist
from tests.support.mixed_workload import Scripts, Workload, run_mixed_workload, transaction


@pytest.fixture
def scripts(redis_client: RedisClient, settings: Settings) -> Scripts:
    return Scripts.bind(redis_client, settings)


@pytest.fixture
async def workload(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    scripts: Scripts,
    monkeypatch: pytest.MonkeyPatch,
) -> Workload:
    monkeypatch.setattr(reconcile_module, "BATCH_SIZE", 2)  # many snapshots, many pages
    return await run_mixed_workload(redis_client, db_engine, scripts)


async def amounts(redis: RedisClient, user_id: int) -> tuple[int, int]:
    held, incoming = await redis.hmget(keyspace.user(user_id), ["held_kopecks", "incoming_kopecks"])
    return int(held or 0), int(incoming or 0)


async def test_clean_after_holds_refunds_and_batches(
    redis_client: RedisClient, db_engine: AsyncEngine, workload: Workload
) -> None:
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.ok, format_report(report)
    assert (report.users_checked, report.refunded_checked) == (6, 3)
    # The unswept expired hold counts toward its payee in Redis, and in the comparison.
    released = workload.holds["released"]
    assert (await amounts(redis_client, released.to_user_id))[1] >= released.amount_kopecks
    assert format_report(report).endswith("3 refunded totals")


async def test_reports_held_and_incoming_drift(
    redis_client: RedisClient, db_engine: AsyncEngine, workload: Workload
) -> None:
    held_1, _ = await amounts(redis_client, 1)
    _, incoming_2 = await amounts(redis_client, 2)
    await redis_client.hincrby(keyspace.user(1), "held_kopecks", 1)
    await redis_client.hincrby(keyspace.user(2), "incoming_kopecks", -1)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert not report.ok
    assert report.held_drifts == [Drift(1, held_1 + 1, held_1)]
    assert report.incoming_drifts == [Drift(2, incoming_2 - 1, incoming_2)]
    assert report.drifts == []
    assert report.refunded_drifts == []
    text = format_report(report)
    assert text.startswith("reconcile FAILED")
    assert "drift in 1 held amounts:" in text
    assert "drift in 1 incoming amounts:" in text
    assert "difference +1 kopecks" in text
    assert "difference -1 kopecks" in text


async def test_an_unswept_expired_hold_counts_only_while_holds_due_lists_it(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    released = workload.holds["released"]
    payee = released.to_user_id
    _, incoming = await amounts(redis_client, payee)
    member = f"{released.hold_id}:{released.from_user_id}:{payee}:{released.amount_kopecks}"
    await redis_client.zrem(keyspace.holds_due(BUCKET), member)  # gone, but still counted
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.incoming_drifts == [Drift(payee, incoming, incoming - released.amount_kopecks)]
    await redis_client.zadd(keyspace.holds_due(BUCKET), {member: released.expires_at_us})
    assert await scripts.holds.sweep(BUCKET, 100) == 2  # it, and the expired hold not yet released
    await persist(redis_client, db_engine)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.ok, format_report(report)
    assert (await amounts(redis_client, payee))[1] == incoming - released.amount_kopecks


async def test_reports_refunded_totals_that_drifted_either_way(
    redis_client: RedisClient, db_engine: AsyncEngine, workload: Workload
) -> None:
    t1, t2 = workload.transfers["t1"], workload.transfers["t2"]
    await redis_client.incrby(keyspace.refunded(t1.to_user_id, t1.txn_id), 5)
    await redis_client.delete(keyspace.refunded(t2.to_user_id, t2.txn_id))
    await redis_client.set(keyspace.refunded(3, 999_999), 7)  # no such refunds in the ledger
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert not report.ok
    assert sorted(report.refunded_drifts) == sorted(
        [
            RefundedDrift(t1.to_user_id, t1.txn_id, 1_005, 1_000),
            RefundedDrift(t2.to_user_id, t2.txn_id, 0, 500),
            RefundedDrift(3, 999_999, 7, 0),
        ]
    )
    assert report.over_refunded == []
    text = format_report(report)
    assert "drift in 3 refunded totals:" in text
    assert f"transfer {t1.txn_id} refunded by user {t1.to_user_id}: Redis 1005 kopecks" in text


async def test_reports_a_transfer_refunded_beyond_its_amount(
    redis_client: RedisClient, db_engine: AsyncEngine, workload: Workload
) -> None:
    t1 = workload.transfers["t1"]
    async with db_engine.begin() as connection:
        await connection.execute(
            update(LedgerTransaction)
            .where(LedgerTransaction.id == t1.txn_id)
            .values(amount_kopecks=900)
        )
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.over_refunded == [OverRefund(t1.txn_id, 1_000, 900)]
    assert not report.ok
    assert "1 transfers refunded beyond their amount:" in format_report(report)


async def test_a_lagging_writer_is_waited_for_and_then_reported(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    hold = workload.holds["pending-2"]
    await scripts.holds.void(hold.to_user_id, hold.hold_id)  # a record with no id
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)
    assert report.writer_behind
    assert report.first_unpersisted == f"the hold_voided record of hold {hold.hold_id}"
    assert (report.held_drifts, report.incoming_drifts) == ([], [])
    await persist(redis_client, db_engine)
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=0.2)
    assert report.ok, format_report(report)


async def test_no_false_drift_while_holds_and_refunds_keep_coming(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    scripts: Scripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile_module, "BATCH_SIZE", 7)
    users = list(range(1, 31))
    await add_users(db_engine, scripts.money, users)
    for user_id in users:
        await scripts.money.deposit(user_id, 100_000)
    await persist(redis_client, db_engine)
    stop = asyncio.Event()
    moves = 0

    async def operations() -> None:
        nonlocal moves
        rng = random.Random(11)
        holds: list[tuple[int, int]] = []  # (payee, hold id)
        transfers: list[tuple[int, int, int]] = []  # (payer, payee, transaction id)
        while not stop.is_set():
            payer, payee = rng.sample(users, 2)
            roll = rng.random()
            try:
                if roll < 0.35:
                    made = await scripts.holds.create(payer, payee, rng.randint(1, 500), 3600)
                    holds.append((payee, made.hold.hold_id))
                elif roll < 0.55 and holds:
                    taker, hold_id = holds.pop(rng.randrange(len(holds)))
                    amount = rng.choice([None, 1])
                    await scripts.holds.capture(taker, hold_id, amount, f"c-{hold_id}")
                elif roll < 0.7 and holds:
                    taker, hold_id = holds.pop(rng.randrange(len(holds)))
                    await scripts.holds.void(taker, hold_id, f"v-{hold_id}")
                elif roll < 0.85 or not transfers:
                    sent = await scripts.money.transfer(payer, payee, rng.randint(1, 300))
                    transfers.append((payer, payee, sent.txn_id))
                else:
                    _, refunder, txn_id = transfers.pop(rng.randrange(len(transfers)))
                    original = await transaction(redis_client, txn_id)
                    await scripts.refunds.refund(refunder, txn_id, original, rng.choice([None, 1]))
            except Refused:
                pass
            moves += 1

    async def writer() -> None:
        while not stop.is_set():
            await persist(redis_client, db_engine)
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(operations()), asyncio.create_task(writer())]
    try:
        reports = []
        for _ in range(3):
            reports.append(await reconcile(redis_client, db_engine, wait_for_writer_s=5))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert moves > 0
    for report in reports:
        assert report.ok, format_report(report)
        assert report.users_checked == len(users)
    await persist(redis_client, db_engine)
    final = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert final.ok, format_report(final)
    assert final.refunded_checked > 0
