"""A mix of every money operation through the real scripts, persisted by the real writer:
pending, captured (all, the whole amount named, part), voided and expired holds (swept;
released by the payer's spending, not yet swept; past expiry and not yet released),
partial and full refunds, batches (several legs, one leg, legs by name), deposits and
transfers; most under idempotency keys. For the tests of `wallet rebuild` and
`wallet reconcile`.

Holds expire at least 60 s after they are made: the expired ones are aged instead, by the
same amount in Redis (hash, both sorted sets) and in the ledger, which keeps their
duration (and so their fingerprint) as made.
"""

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerHold
from service.domain.holds import Hold
from service.domain.records import record_from_stream_fields
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.batches import BatchScripts, Leg
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts
from service.redis.refunds import RefundScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import add_users, persist, stream_entries

USERS = (1, 2, 3, 4, 5, 6)
HOUR_S = 3600
AGE_S = 120  # how far back the expired holds are moved (they lasted 60 s)


@dataclass
class Scripts:
    money: MoneyScripts
    holds: HoldScripts
    batches: BatchScripts
    refunds: RefundScripts

    @classmethod
    def bind(cls, redis: RedisClient, settings: Settings) -> "Scripts":
        return cls(
            MoneyScripts(redis, settings),
            HoldScripts(redis, settings),
            BatchScripts(redis, settings),
            RefundScripts(redis, settings),
        )


# A retry: the same call again, and a call with the same key and another body.
Call = Callable[[], Awaitable[Any]]


@dataclass
class Workload:
    holds: dict[str, Hold] = field(default_factory=dict)
    transfers: dict[str, Transaction] = field(default_factory=dict)
    # (owner, key) -> (the first answer, the same call again, another body with the key)
    keyed: dict[tuple[int, str], tuple[Any, Call, Call]] = field(default_factory=dict)


async def transaction(redis: RedisClient, txn_id: int) -> Transaction:
    """The transaction as the API reads it (here: from the stream)."""
    entries = await stream_entries(redis)
    records = [record_from_stream_fields(fields) for _, fields in entries]
    return next(r for r in records if isinstance(r, Transaction) and r.txn_id == txn_id)


async def age_hold(redis: RedisClient, engine: AsyncEngine, hold: Hold, seconds: int) -> Hold:
    """Moves a persisted hold ``seconds`` into the past, in Redis and in the ledger."""
    shift = seconds * 1_000_000
    aged = dataclasses.replace(
        hold, created_at_us=hold.created_at_us - shift, expires_at_us=hold.expires_at_us - shift
    )
    await redis.hset(
        keyspace.hold(BUCKET, hold.hold_id),
        mapping={"created_at_us": aged.created_at_us, "expires_at_us": aged.expires_at_us},
    )
    payer_member = f"{hold.hold_id}:{hold.to_user_id}:{hold.amount_kopecks}"
    due_member = f"{hold.hold_id}:{hold.from_user_id}:{hold.to_user_id}:{hold.amount_kopecks}"
    await redis.zadd(
        keyspace.pending_holds(hold.from_user_id), {payer_member: aged.expires_at_us}, xx=True
    )
    await redis.zadd(keyspace.holds_due(BUCKET), {due_member: aged.expires_at_us}, xx=True)
    async with engine.begin() as connection:
        await connection.execute(
            update(LedgerHold)
            .where(LedgerHold.id == hold.hold_id)
            .values(
                created_at=LedgerHold.created_at - timedelta(seconds=seconds),
                expires_at=LedgerHold.expires_at - timedelta(seconds=seconds),
            )
        )
    return aged


async def run_mixed_workload(
    redis: RedisClient, engine: AsyncEngine, scripts: Scripts, with_users: bool = True
) -> Workload:
    """Every operation, persisted; see the module docstring. Returns what a retry needs."""
    s, w = scripts, Workload()
    if with_users:
        await add_users(engine, s.money, list(USERS))

    async def keyed(owner: int, key: str, first: Call, again: Call, other: Call) -> Any:
        answer = await first()
        w.keyed[(owner, key)] = (answer, again, other)
        return answer

    # Deposits and a transfer.
    for user_id, amount in ((1, 100_000), (2, 50_000), (3, 20_000), (4, 10_000)):
        await s.money.deposit(user_id, amount)
    await keyed(
        6,
        "dep-6",
        lambda: s.money.deposit(6, 1_000, "dep-6"),
        lambda: s.money.deposit(6, 1_000, "dep-6"),
        lambda: s.money.deposit(6, 1_001, "dep-6"),
    )
    await keyed(
        3,
        "tr-3",
        lambda: s.money.transfer(3, 4, 250, "tr-3"),
        lambda: s.money.transfer(3, 4, 250, "tr-3"),
        lambda: s.money.transfer(3, 5, 250, "tr-3"),
    )

    # Holds: pending, captured three ways, voided.
    pending = await keyed(
        1,
        "hold-pending",
        lambda: s.holds.create(1, 2, 3_000, HOUR_S, "hold-pending"),
        lambda: s.holds.create(1, 2, 3_000, HOUR_S, "hold-pending", to_username="User2"),
        lambda: s.holds.create(1, 2, 3_000, HOUR_S + 1, "hold-pending"),
    )
    w.holds["pending"] = pending.hold
    w.holds["pending-2"] = (await s.holds.create(1, 3, 1_000, HOUR_S)).hold
    made = await keyed(
        1,
        "hold-all",
        lambda: s.holds.create(1, 2, 2_000, HOUR_S, "hold-all"),
        lambda: s.holds.create(1, 2, 2_000, HOUR_S, "hold-all"),
        lambda: s.holds.create(1, 3, 2_000, HOUR_S, "hold-all"),
    )
    w.holds["all"] = made.hold
    w.holds["full"] = (await s.holds.create(1, 2, 1_500, HOUR_S)).hold
    w.holds["part"] = (await s.holds.create(3, 2, 1_000, HOUR_S)).hold
    made = await keyed(
        1,
        "hold-void",
        lambda: s.holds.create(1, 4, 700, HOUR_S, "hold-void"),
        lambda: s.holds.create(1, 4, 700, HOUR_S, "hold-void"),
        lambda: s.holds.create(1, 4, 701, HOUR_S, "hold-void"),
    )
    w.holds["void"] = made.hold
    w.holds["incoming-only"] = (await s.holds.create(4, 6, 900, HOUR_S)).hold
    all_id, full_id, part_id = (w.holds[name].hold_id for name in ("all", "full", "part"))
    capture_all = await keyed(
        2,
        "cap-all",
        lambda: s.holds.capture(2, all_id, None, "cap-all"),
        lambda: s.holds.capture(2, all_id, None, "cap-all"),
        lambda: s.holds.capture(2, all_id, 2_000, "cap-all"),  # the amount, not "all"
    )
    await keyed(
        2,
        "cap-full",
        lambda: s.holds.capture(2, full_id, 1_500, "cap-full"),
        lambda: s.holds.capture(2, full_id, 1_500, "cap-full"),
        lambda: s.holds.capture(2, full_id, None, "cap-full"),  # "all", not the amount
    )
    await keyed(
        2,
        "cap-part",
        lambda: s.holds.capture(2, part_id, 400, "cap-part"),
        lambda: s.holds.capture(2, part_id, 400, "cap-part"),
        lambda: s.holds.capture(2, part_id, 401, "cap-part"),
    )
    void_id, other_id = w.holds["void"].hold_id, w.holds["pending-2"].hold_id
    await keyed(
        4,
        "void-1",
        lambda: s.holds.void(4, void_id, "void-1"),
        lambda: s.holds.void(4, void_id, "void-1"),
        lambda: s.holds.void(4, other_id, "void-1"),
    )

    # Holds that expire, aged once persisted: one swept (both sides), one whose payer's
    # side a spending script released (the sweeper has not come yet), one not yet released.
    swept = (await s.holds.create(2, 5, 600, 60)).hold
    await persist(redis, engine)
    w.holds["swept"] = await age_hold(redis, engine, swept, AGE_S)
    assert await s.holds.sweep(BUCKET, 100) == 1
    released = (await s.holds.create(2, 6, 800, 60)).hold
    unreleased = (await s.holds.create(3, 5, 300, 60)).hold
    await persist(redis, engine)
    w.holds["released"] = await age_hold(redis, engine, released, AGE_S)
    w.holds["unreleased"] = await age_hold(redis, engine, unreleased, AGE_S)
    await s.money.transfer(2, 3, 1)  # releases the payer's side of "released"
    # From here on user 3 spends nothing and no sweep runs.

    # Refunds: part then the rest ("all"), all of one named by its amount, part of a capture.
    t1 = await s.money.transfer(4, 5, 1_000)
    w.transfers["t1"] = await transaction(redis, t1.txn_id)
    t2 = await s.money.transfer(1, 6, 500)
    w.transfers["t2"] = await transaction(redis, t2.txn_id)
    w.transfers["capture-all"] = await transaction(redis, capture_all.txn_id)
    t1_, t2_ = w.transfers["t1"], w.transfers["t2"]
    await keyed(
        5,
        "ref-part",
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, 300, "ref-part"),
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, 300, "ref-part"),
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, 301, "ref-part"),
    )
    await keyed(
        5,
        "ref-rest",
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, None, "ref-rest"),
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, None, "ref-rest"),
        lambda: s.refunds.refund(5, t1_.txn_id, t1_, 700, "ref-rest"),  # the amount left
    )
    await keyed(
        6,
        "ref-exact",
        lambda: s.refunds.refund(6, t2_.txn_id, t2_, 500, "ref-exact"),
        lambda: s.refunds.refund(6, t2_.txn_id, t2_, 500, "ref-exact"),
        lambda: s.refunds.refund(6, t2_.txn_id, t2_, None, "ref-exact"),
    )
    capture = w.transfers["capture-all"]
    await s.refunds.refund(2, capture.txn_id, capture, 100)

    # Batches.
    three = [Leg(2, 100), Leg(3, 200), Leg(2, 300)]
    await keyed(
        1,
        "batch-3",
        lambda: s.batches.transfer_batch(1, three, "batch-3"),
        lambda: s.batches.transfer_batch(1, three, "batch-3"),
        lambda: s.batches.transfer_batch(1, [Leg(2, 100), Leg(2, 300), Leg(3, 200)], "batch-3"),
    )
    await keyed(
        1,
        "batch-1",
        lambda: s.batches.transfer_batch(1, [Leg(4, 50)], "batch-1"),
        lambda: s.batches.transfer_batch(1, [Leg(4, 50)], "batch-1"),
        lambda: s.money.transfer(1, 4, 50, "batch-1"),  # a transfer's row is the same
    )
    await keyed(
        1,
        "batch-name",
        lambda: s.batches.transfer_batch(1, [Leg(5, 10, "user5"), Leg(6, 20)], "batch-name"),
        lambda: s.batches.transfer_batch(1, [Leg(5, 10), Leg(6, 20, "USER6")], "batch-name"),
        lambda: s.batches.transfer_batch(1, [Leg(5, 10), Leg(6, 21)], "batch-name"),
    )
    await persist(redis, engine)
    return w
