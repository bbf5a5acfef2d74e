"""lua/refund.lua through service/redis/refunds.py, against a real server."""

import asyncio
import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.domain.amounts import MAX_BALANCE_KOPECKS
from service.domain.refusals import Refused
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.batches import BatchScripts, Leg
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts, SessionCheck
from service.redis.refunds import RefundAccepted, RefundScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.held_money import HOUR_US, now_us, put_hold
from tests.support.helpers import (
    add_users,
    balance,
    persist,
    refusing,
    snapshot,
    stream_fields,
    stream_transactions,
)
from tests.support.lost_replies import LosesTheReply

PAYER, PAYEE, STRANGER = 1, 2, 3
TRANSFERRED = 3_000


@pytest.fixture
def refunds(redis_client: RedisClient, settings: Settings) -> RefundScripts:
    return RefundScripts(redis_client, settings)


@pytest.fixture
async def transfer(money: MoneyScripts, redis_client: RedisClient) -> Transaction:
    """Transfer 2: 3,000 from user 1 (left with 7,000) to user 2, as the caller would read
    it from the ledger (here: from the stream)."""
    for user_id in (PAYER, PAYEE, STRANGER):
        await money.register_user(user_id)
    await money.deposit(PAYER, 10_000)
    accepted = await money.transfer(PAYER, PAYEE, TRANSFERRED)
    return next(t for t in await stream_transactions(redis_client) if t.txn_id == accepted.txn_id)


async def refunded_so_far(redis: RedisClient, txn_id: int = 2) -> int:
    return int(await redis.get(keyspace.refunded(PAYEE, txn_id)) or 0)


async def test_a_refund_is_stamped_past_the_buckets_clock(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    """As every money script's (tests/test_lua_scripts.py)."""
    ahead_us = transfer.created_at_us + 3_600_000_000
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    accepted = await refunds.refund(PAYEE, transfer.txn_id, transfer, 1)
    assert accepted.created_at_us == ahead_us + 1


async def test_a_full_refund_and_its_record(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    accepted = await refunds.refund(PAYEE, transfer.txn_id, transfer, None)
    assert accepted == RefundAccepted(
        txn_id=3,
        created_at_us=accepted.created_at_us,
        amount_kopecks=TRANSFERRED,
        to_user_id=PAYER,
        replayed=False,
    )
    assert (await balance(redis_client, PAYER), await balance(redis_client, PAYEE)) == (10_000, 0)
    assert await refunded_so_far(redis_client) == TRANSFERRED
    assert await redis_client.ttl(keyspace.refunded(PAYEE, 2)) == -1  # kept for ever
    assert (await stream_fields(redis_client))[-1] == {
        "id": "3",
        "kind": "refund",
        "from": str(PAYEE),
        "to": str(PAYER),
        "amount": str(TRANSFERRED),
        "created_at_us": str(accepted.created_at_us),
        "from_balance": "0",
        "to_balance": "10000",
        "idem_key": "",
        "refund_of": "2",
    }
    refund = (await stream_transactions(redis_client))[-1]
    assert (refund.kind, refund.refund_of) == ("refund", 2)
    before = await snapshot(redis_client)
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(PAYEE, 2, transfer, None)
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(PAYEE, 2, transfer, 1)
    assert await snapshot(redis_client) == before


async def test_partial_refunds_never_exceed_the_transfer(
    refunds: RefundScripts, money: MoneyScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    await money.deposit(PAYEE, 5_000)  # money enough to refund more than was received
    assert (await refunds.refund(PAYEE, 2, transfer, 1)).amount_kopecks == 1
    assert (await refunds.refund(PAYEE, 2, transfer, 1_499)).amount_kopecks == 1_499
    before = await snapshot(redis_client)
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER) as exceeds:
        await refunds.refund(PAYEE, 2, transfer, 1_501)
    assert exceeds.value.field is None
    assert await snapshot(redis_client) == before
    rest = await refunds.refund(PAYEE, 2, transfer, None)
    assert (rest.txn_id, rest.amount_kopecks) == (6, 1_500)
    assert await refunded_so_far(redis_client) == TRANSFERRED
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(PAYEE, 2, transfer, 1)
    assert await balance(redis_client, PAYER) == 10_000
    assert await balance(redis_client, PAYEE) == 5_000
    refunded = [t for t in await stream_transactions(redis_client) if t.kind == "refund"]
    assert [(t.amount_kopecks, t.refund_of) for t in refunded] == [(1, 2), (1_499, 2), (1_500, 2)]


async def test_only_a_transfer_received_by_the_caller_can_be_refunded(
    refunds: RefundScripts, money: MoneyScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    deposit = next(t for t in await stream_transactions(redis_client) if t.kind == "deposit")
    await refunds.refund(PAYEE, 2, transfer, 100)
    refund = (await stream_transactions(redis_client))[-1]
    before = await snapshot(redis_client)
    for user_id, txn_id, transaction in (
        (PAYEE, refund.txn_id, refund),  # a refund of a refund
        (PAYER, refund.txn_id, refund),  # ... by its recipient either
        (PAYER, deposit.txn_id, deposit),  # a deposit
        (STRANGER, 2, transfer),  # by a stranger
        (PAYER, 2, transfer),  # by the payer
        (PAYEE, 99, None),  # no such transaction
    ):
        with refusing(refusals.TRANSACTION_NOT_FOUND) as not_found:
            await refunds.refund(user_id, txn_id, transaction, None)
        assert (not_found.value.field, not_found.value.replayed) == (None, False)
    assert await snapshot(redis_client) == before
    # A capture is a transfer (with its hold): its recipient may refund it.
    capture = await money.transfer(PAYER, PAYEE, 500)
    captured = dataclasses.replace(transfer, txn_id=capture.txn_id, amount_kopecks=500, hold_id=7)
    assert (await refunds.refund(PAYEE, capture.txn_id, captured, None)).amount_kopecks == 500


async def test_not_found_is_recorded_so_that_the_key_never_turns_into_a_refund(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    with refusing(refusals.TRANSACTION_NOT_FOUND) as first:
        await refunds.refund(PAYEE, 2, None, None, idempotency_key="early")
    assert not first.value.replayed
    # The transfer is found now (the ledger caught up): the key still answers not found.
    with refusing(refusals.TRANSACTION_NOT_FOUND) as replay:
        await refunds.refund(PAYEE, 2, transfer, None, idempotency_key="early")
    assert replay.value.replayed
    assert await balance(redis_client, PAYEE) == TRANSFERRED
    assert await redis_client.hgetall(keyspace.idempotency(PAYEE, "early")) == {
        b"fingerprint": b"refund:2:all",
        b"outcome": b"transaction_not_found",
        b"txn_id": b"",
        b"created_at_us": b"",
        b"amount": b"",
    }


async def test_replays_and_key_reuse(
    refunds: RefundScripts, money: MoneyScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    sent = await refunds.refund(PAYEE, 2, transfer, None, idempotency_key="r")
    again = await refunds.refund(PAYEE, 2, transfer, None, idempotency_key="r")
    assert again == dataclasses.replace(sent, replayed=True)
    assert await redis_client.hgetall(keyspace.idempotency(PAYEE, "r")) == {
        b"fingerprint": b"refund:2:all",
        b"outcome": b"ok",
        b"txn_id": str(sent.txn_id).encode(),
        b"created_at_us": str(sent.created_at_us).encode(),
        b"amount": b"3000",
    }
    assert (await stream_fields(redis_client))[-1]["idem_key"] == "r"
    before = await snapshot(redis_client)
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await refunds.refund(PAYEE, 2, transfer, TRANSFERRED, idempotency_key="r")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.deposit(PAYEE, 5, idempotency_key="r")
    assert await snapshot(redis_client) == before
    # A recorded refusal is replayed as it was, even once it would pass.
    await money.transfer(PAYER, PAYEE, 2_000)
    transfer2 = (await stream_transactions(redis_client))[-1]
    await money.transfer(PAYEE, STRANGER, 1_500)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await refunds.refund(PAYEE, transfer2.txn_id, transfer2, 1_600, idempotency_key="s")
    await money.deposit(PAYEE, 1_000)
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await refunds.refund(PAYEE, transfer2.txn_id, transfer2, 1_600, idempotency_key="s")
    assert replay.value.replayed
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(PAYEE, transfer2.txn_id, transfer2, 2_001, idempotency_key="t")
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER) as replay:
        await refunds.refund(PAYEE, transfer2.txn_id, transfer2, 2_001, idempotency_key="t")
    assert replay.value.replayed


async def test_available_counts_holds_and_releases_expired_ones_only_on_success(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    now = now_us()
    await put_hold(redis_client, PAYEE, 501, STRANGER, 2_000, now + HOUR_US)
    await put_hold(redis_client, PAYEE, 502, STRANGER, 500, now - 1)
    # available = 3000 - 2500 + 500 = 1000
    before = await snapshot(redis_client)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await refunds.refund(PAYEE, 2, transfer, None)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await refunds.refund(PAYEE, 2, transfer, 1_001)
    assert await snapshot(redis_client) == before
    accepted = await refunds.refund(PAYEE, 2, transfer, 1_000)
    assert await redis_client.hgetall(keyspace.user(PAYEE)) == {
        b"balance_kopecks": b"2000",
        b"held_kopecks": b"2000",
    }
    assert await redis_client.zrange(keyspace.pending_holds(PAYEE), 0, -1) == [b"501:3:2000"]
    expired, refund = (await stream_fields(redis_client))[-2:]
    assert expired == {
        "kind": "hold_expired",
        "hold": "502",
        "from": str(PAYEE),
        "to": str(STRANGER),
        "amount": "500",
        "created_at_us": str(accepted.created_at_us),
        "expires_at_us": str(now - 1),
        "idem_key": "",
    }
    assert (refund["kind"], refund["amount"], refund["from_balance"]) == ("refund", "1000", "2000")


async def test_the_payers_ceiling_counts_incoming_money(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    # Payer: 7,000 posted; pending holds toward it will bring the rest up to the ceiling - 10.
    await redis_client.hset(
        keyspace.user(PAYER), "incoming_kopecks", MAX_BALANCE_KOPECKS - 7_000 - 10
    )
    before = await snapshot(redis_client)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await refunds.refund(PAYEE, 2, transfer, 11)
    assert await snapshot(redis_client) == before
    assert (await refunds.refund(PAYEE, 2, transfer, 10)).amount_kopecks == 10


async def test_refusals_before_any_money(
    refunds: RefundScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    before = await snapshot(redis_client)
    with refusing(refusals.SESSION_ENDED):
        await refunds.refund(
            PAYEE, 2, transfer, None, session=SessionCheck("wallet_session:{b0}:gone", 3600, 600)
        )
    with refusing(refusals.ACCOUNT_NOT_FOUND):
        await refunds.refund(9, 2, dataclasses.replace(transfer, to_user_id=9), None)
    await redis_client.set(keyspace.txn_seq(BUCKET), 10**12 - 1)
    with refusing(refusals.EPOCH_EXHAUSTED):
        await refunds.refund(PAYEE, 2, transfer, None, idempotency_key="k")
    await redis_client.set(keyspace.txn_seq(BUCKET), 2)
    assert await snapshot(redis_client) == before
    for bad in (
        dict(txn_id=0, transfer=None, amount_kopecks=None),
        dict(txn_id=3, transfer=transfer, amount_kopecks=None),  # not the transaction 3
        dict(txn_id=2, transfer=transfer, amount_kopecks=0),
        dict(txn_id=2, transfer=transfer, amount_kopecks=10**12 + 1),
    ):
        with pytest.raises(ValueError, match=r"bad|passed|amount"):
            await refunds.refund(PAYEE, **bad)


async def test_a_lost_reply_is_answered_with_the_refund_and_its_amount(
    refunds: RefundScripts,
    redis_client: RedisClient,
    transfer: Transaction,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(refunds, "_refund", LosesTheReply(refunds._refund))
    partial = await refunds.refund(PAYEE, 2, transfer, 1_000)
    rest = await refunds.refund(PAYEE, 2, transfer, None)
    assert [(r.txn_id, r.amount_kopecks, r.to_user_id, r.replayed) for r in (partial, rest)] == [
        (3, 1_000, PAYER, False),
        (4, 2_000, PAYER, False),
    ]
    records = (await stream_fields(redis_client))[-2:]
    assert [(r["id"], r["amount"], r["created_at_us"]) for r in records] == [
        ("3", "1000", str(partial.created_at_us)),
        ("4", "2000", str(rest.created_at_us)),
    ]


async def test_a_lost_request_that_did_not_run_never_runs(
    refunds: RefundScripts,
    redis_client: RedisClient,
    transfer: Transaction,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost = LosesTheReply(refunds._refund, runs=False)
    monkeypatch.setattr(refunds, "_refund", lost)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await refunds.refund(PAYEE, 2, transfer, None)
    before = await snapshot(redis_client)
    assert await lost.arrives_late() == [b"not_applied", b"", b"", b"", b"0"]
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize("amount", [200, None])
async def test_concurrent_refunds_of_one_transfer(
    redis_url: str, redis_client: RedisClient, transfer: Transaction, amount: int | None
) -> None:
    settings = Settings(redis_url=redis_url, redis_max_connections=8)
    clients = [connect_redis(settings) for _ in range(4)]
    scripts = [RefundScripts(client, settings) for client in clients]

    async def one(n: int) -> RefundAccepted | Refused:
        try:
            return await scripts[n % len(scripts)].refund(PAYEE, 2, transfer, amount, f"r{n}")
        except Refused as refused:
            return refused

    results = await asyncio.gather(*(one(n) for n in range(30)))
    for client in clients:
        await client.aclose()
    accepted = [r for r in results if isinstance(r, RefundAccepted)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(accepted) == (TRANSFERRED // amount if amount else 1)
    assert {r.refusal for r in refused} == {refusals.REFUND_EXCEEDS_TRANSFER}
    assert sum(r.amount_kopecks for r in accepted) == TRANSFERRED
    assert await refunded_so_far(redis_client) == TRANSFERRED
    assert (await balance(redis_client, PAYER), await balance(redis_client, PAYEE)) == (10_000, 0)
    records = [t for t in await stream_transactions(redis_client) if t.kind == "refund"]
    assert sorted(t.txn_id for t in records) == sorted(r.txn_id for r in accepted)
    assert min(t.from_balance_kopecks or 0 for t in records) == 0


async def test_concurrent_refunds_on_one_balance(
    redis_url: str, money: MoneyScripts, redis_client: RedisClient, transfer: Transaction
) -> None:
    await money.transfer(PAYEE, STRANGER, 2_000)  # the payee has 1,000 left: 5 refunds of 200
    settings = Settings(redis_url=redis_url, redis_max_connections=8)
    clients = [connect_redis(settings) for _ in range(4)]
    scripts = [RefundScripts(client, settings) for client in clients]

    async def one(n: int) -> RefundAccepted | Refused:
        try:
            return await scripts[n % len(scripts)].refund(PAYEE, 2, transfer, 200)
        except Refused as refused:
            return refused

    results = await asyncio.gather(*(one(n) for n in range(30)))
    for client in clients:
        await client.aclose()
    assert sum(isinstance(r, RefundAccepted) for r in results) == 5
    assert {r.refusal for r in results if isinstance(r, Refused)} == {refusals.INSUFFICIENT_FUNDS}
    assert await balance(redis_client, PAYEE) == 0
    assert await balance(redis_client, PAYER) == 8_000
    assert await refunded_so_far(redis_client) == 1_000


async def test_the_writer_stores_batch_legs_and_refunds_as_they_are(
    redis_client: RedisClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    money = MoneyScripts(redis_client, settings)
    await add_users(db_engine, money, [PAYER, PAYEE, STRANGER])
    await money.deposit(PAYER, 10_000)
    batch = await BatchScripts(redis_client, settings).transfer_batch(
        PAYER, [Leg(PAYEE, 3_000), Leg(STRANGER, 1_000), Leg(PAYEE, 500)], "b"
    )
    legs = await stream_transactions_of_kind(redis_client, "transfer")
    refunds = RefundScripts(redis_client, settings)
    first = await refunds.refund(PAYEE, batch.first_txn_id, legs[0], 1_000, "r1")
    rest = await refunds.refund(PAYEE, batch.first_txn_id, legs[0], None, "r2")
    stored = await persist(redis_client, db_engine)
    assert stored >= 6
    assert await redis_client.xlen(keyspace.txn_dead_letter(BUCKET)) == 0
    async with db_engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT id, kind, from_user_id, to_user_id, amount_kopecks,"
                    " from_balance_after_kopecks, to_balance_after_kopecks, idempotency_key,"
                    " refund_of FROM transactions ORDER BY id"
                )
            )
        ).all()
    assert [tuple(row) for row in rows[1:]] == [
        (2, "transfer", PAYER, PAYEE, 3_000, 7_000, 3_000, "b", None),
        (3, "transfer", PAYER, STRANGER, 1_000, 6_000, 1_000, "b", None),
        (4, "transfer", PAYER, PAYEE, 500, 5_500, 3_500, "b", None),
        (first.txn_id, "refund", PAYEE, PAYER, 1_000, 2_500, 6_500, "r1", 2),
        (rest.txn_id, "refund", PAYEE, PAYER, 2_000, 500, 8_500, "r2", 2),
    ]


async def stream_transactions_of_kind(redis: RedisClient, kind: str) -> list[Transaction]:
    return [t for t in await stream_transactions(redis) if t.kind == kind]
