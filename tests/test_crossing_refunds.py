"""Refunds of transfers across buckets (lua/refund.lua's crossing mode, service/redis/refunds.py)
against a real Redis with three buckets (user u in bucket u % 3): the refund crosses back,
its refunded total counts it once, a void gives the total back, the ledger stores both sides
with ``refund_of``, and money is conserved, counting what is in flight, at every step."""

import asyncio
import random
from dataclasses import replace
from typing import cast

import pytest
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.domain.postings import FoundTransaction
from service.domain.refusals import Refused
from service.ledger.history import read_history
from service.ledger.lookup import find_transaction
from service.ledger.rebuild import rebuild
from service.redis import keyspace
from service.redis.crossing import CrossingLegs, Reservation
from service.redis.money import Accepted, MoneyScripts
from service.redis.refunds import RefundAccepted, RefundScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.crossing import (
    DEPOSIT_KOPECKS,
    USERS,
    assert_conserved,
    assert_reconciled,
    in_transit,
    incoming,
    losing_redis_after_reservations,
    only_due_reservation,
    reservation_of,
    stream_kinds,
)
from tests.support.helpers import balance, lose_redis, persist, refusing

TAIL = 100


@pytest.fixture
def refunds(redis_client: RedisClient, settings: Settings) -> RefundScripts:
    return RefundScripts(redis_client, settings)


async def received(
    redis: RedisClient, engine: AsyncEngine, payee: int, transfer: Accepted
) -> FoundTransaction:
    """The transfer as its payee finds it by id, as the API does before a refund."""
    found = await find_transaction(redis, engine, payee, transfer.txn_id, tail_max_entries=TAIL)
    assert found is not None
    return found


async def refunded_total(redis: RedisClient, refunder: int, txn_id: int) -> int:
    return int(cast(bytes | None, await redis.get(keyspace.refunded(refunder, txn_id))) or 0)


async def refund_reserved_only(
    redis: RedisClient,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
    refunder: int,
    transfer: FoundTransaction,
    amount_kopecks: int | None,
    idempotency_key: str | None = None,
) -> Reservation:
    """A refund whose API lost Redis right after its reservation: answered outcome_unknown.
    Its reservation, the only one due in the refunder's bucket."""
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await refunds.refund(refunder, transfer.txn_id, transfer, amount_kopecks, idempotency_key)
    return await only_due_reservation(redis, keyspace.bucket_of(refunder))


async def test_a_refund_across_buckets_crosses_back_once(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, refunds: RefundScripts
) -> None:
    """User 5 (bucket 2) refunds part of a transfer from 4 (bucket 1), then all that is left:
    each a reservation on 5's bucket and a credit on 4's, with refund_of; a replay with the
    key moves nothing; nothing is left to refund after."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    assert (transfer.kind, transfer.from_user_id, transfer.amount_kopecks) == ("transfer", 4, 1_000)

    part = await refunds.refund(5, paid.txn_id, transfer, 300, "r-part")
    assert (part.amount_kopecks, part.to_user_id, part.replayed) == (300, 4, False)
    await assert_conserved(redis_client)
    rest = await refunds.refund(5, paid.txn_id, transfer, None, "r-rest")
    assert (rest.amount_kopecks, rest.replayed) == (700, False)
    assert await balance(redis_client, 4) == DEPOSIT_KOPECKS
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS
    assert await refunded_total(redis_client, 5, paid.txn_id) == 1_000
    assert await in_transit(redis_client) == 0
    assert await incoming(redis_client, 4) == 0
    await assert_conserved(redis_client)

    again = await refunds.refund(5, paid.txn_id, transfer, None, "r-rest")
    assert again == RefundAccepted(rest.txn_id, rest.created_at_us, 700, 4, replayed=True)
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(5, paid.txn_id, transfer, 1)
    assert await incoming(redis_client, 4) == 0  # the refused one's expectation given back
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS

    # The refunder's bucket holds the reservations and their settles, the payer's the
    # credits; each names the transfer refunded.
    assert (await stream_kinds(redis_client, 2))[-4:] == [
        "transfer_out", "transfer_settled", "transfer_out", "transfer_settled"
    ]  # fmt: skip
    credited = await received(redis_client, db_engine, 4, Accepted(part.txn_id, 0, False))
    assert (credited.kind, credited.refund_of) == ("refund", paid.txn_id)
    # A refund is no transfer to refund.
    with refusing(refusals.TRANSACTION_NOT_FOUND):
        await refunds.refund(4, part.txn_id, credited, None)


async def test_refusals_of_a_refund_across_buckets_move_nothing(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, refunds: RefundScripts
) -> None:
    """Too little available, a payer whose ceiling the refund would pass, and more than the
    transfer: refused, recorded under the key, the payer's headroom given back."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    await funded.transfer(5, 6, DEPOSIT_KOPECKS + 500)  # 5 keeps 500
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await refunds.refund(5, paid.txn_id, transfer, 600, "too-much")
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await refunds.refund(5, paid.txn_id, transfer, 600, "too-much")
    assert replay.value.replayed
    with refusing(refusals.REFUND_EXCEEDS_TRANSFER):
        await refunds.refund(5, paid.txn_id, transfer, 1_001)
    # 4's ceiling leaves room for 50 kopecks more.
    room = 10**15 - await balance(redis_client, 4) - 50
    await redis_client.hset(keyspace.user(4), "incoming_kopecks", room)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await refunds.refund(5, paid.txn_id, transfer, 100)
    await redis_client.hset(keyspace.user(4), "incoming_kopecks", 0)
    assert await refunded_total(redis_client, 5, paid.txn_id) == 0
    assert await balance(redis_client, 5) == 500
    assert await in_transit(redis_client) == 0
    await assert_conserved(redis_client)


async def test_a_voided_refund_gives_its_refunded_total_back(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refund left after its reservation, its credit fenced off, is voided: the money back
    to the refunder and the refunded total lowered again, so all of the transfer can still be
    refunded; its key is forgotten, so a retry with it is a new refund."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    undone = await refund_reserved_only(
        redis_client, refunds, monkeypatch, 5, transfer, 400, "r-undone"
    )
    assert undone.refund_of == paid.txn_id
    assert await refunded_total(redis_client, 5, paid.txn_id) == 400
    await assert_conserved(redis_client)
    legs = CrossingLegs(redis_client)
    assert await legs.abort(4, undone.token) is None
    assert await legs.complete(2, undone.txn_id) == "voided"
    assert await refunded_total(redis_client, 5, paid.txn_id) == 0
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 1_000
    await assert_conserved(redis_client)

    retry = await refunds.refund(5, paid.txn_id, transfer, 400, "r-undone")
    assert (retry.replayed, retry.amount_kopecks) == (False, 400)
    assert retry.txn_id != undone.txn_id
    rest = await refunds.refund(5, paid.txn_id, transfer, None)
    assert rest.amount_kopecks == 600
    assert await balance(redis_client, 4) == DEPOSIT_KOPECKS
    await assert_conserved(redis_client)


async def test_a_refund_of_all_that_is_left_expects_again_when_more_is_left(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is left grew between the read and the script (a refund voided meanwhile): the
    script answers stale, the expectation is given back, and the next attempt refunds all."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    reads: list[int] = []
    read_left = RefundScripts._left_as_read

    async def behind(self: RefundScripts, user_id: int, found: FoundTransaction) -> int:
        left = await read_left(self, user_id, found)
        reads.append(left)
        return left - 250 if len(reads) == 1 else left

    monkeypatch.setattr(RefundScripts, "_left_as_read", behind)
    rest = await refunds.refund(5, paid.txn_id, transfer, None)
    assert reads == [1_000, 1_000]
    assert rest.amount_kopecks == 1_000
    assert await incoming(redis_client, 4) == 0
    await assert_conserved(redis_client)


async def test_both_parties_read_a_refund_across_buckets(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, refunds: RefundScripts
) -> None:
    """The refund is in the transfer history of both parties, of kind refund with refund_of,
    from the tail and then from the ledger."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    made = await refunds.refund(5, paid.txn_id, transfer, 300)
    for _ in ("tail", "ledger"):
        for user_id, direction in ((4, "in"), (5, "out")):
            page = await read_history(redis_client, db_engine, user_id=user_id, kind="transfer",
                                      direction="all", before=None, limit=10,
                                      tail_max_entries=TAIL)  # fmt: skip
            [newest, _] = page.postings
            body = newest.as_json(with_direction=True)
            assert (body["id"], body["kind"], body["refund_of"], body["direction"]) == (
                made.txn_id,
                "refund",
                paid.txn_id,
                direction,
            )
            assert (body["from_user_id"], body["to_user_id"], body["amount"]) == (5, 4, 300)
        await persist(redis_client, db_engine)
    found = await find_transaction(redis_client, db_engine, 5, paid.txn_id, tail_max_entries=TAIL)
    assert found is not None
    assert (found.kind, found.to_user_id) == ("transfer", 5)
    # Its payer finds no credit of it to refund.
    assert (
        await find_transaction(redis_client, db_engine, 4, paid.txn_id, tail_max_entries=TAIL)
        is None
    )


async def test_reconcile_and_rebuild_count_refunds_across_buckets(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refund settled, one voided, one left after its reservation, and one whose credit
    the ledger holds without its reservation (a Redis loss between the two writers): the
    refunded totals reconcile; rebuild restores them and the refunds' keys, voids the one
    left half-way (its total lowered again) and debits the refunder again for the one
    whose reservation was lost; the ledger is whole after, and a retry with a key replays,
    but the voided ones', which their voids forgot."""
    paid = await funded.transfer(4, 5, 1_000)
    other = await funded.transfer(7, 8, 500)
    third = await funded.transfer(1, 2, 200)
    transfer = await received(redis_client, db_engine, 5, paid)
    settled = await refunds.refund(5, paid.txn_id, transfer, None, "all-back")
    undone = await refund_reserved_only(
        redis_client, refunds, monkeypatch, 8, await received(redis_client, db_engine, 8, other),
        100, "undone",
    )  # fmt: skip
    legs = CrossingLegs(redis_client)
    assert await legs.abort(7, undone.token) is None
    assert await legs.complete(2, undone.txn_id) == "voided"
    left = await refund_reserved_only(
        redis_client, refunds, monkeypatch, 8, await received(redis_client, db_engine, 8, other),
        150, "left",
    )  # fmt: skip
    lost = await refunds.refund(2, third.txn_id, await received(redis_client, db_engine, 2, third),
                                60, "lost")  # fmt: skip
    check = await assert_reconciled(redis_client, db_engine)
    assert check.refunded_checked == 3
    assert check.in_transit_kopecks == 150

    async with db_engine.begin() as connection:
        for table, key in (("transfer_ends", "transfer_id"), ("transfer_reservations", "id")):
            await connection.execute(text(f"DELETE FROM {table} WHERE {key} = :id"),
                                     {"id": lost.txn_id})  # fmt: skip
    before = {u: await balance(redis_client, u) for u in USERS}
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (report.transfers_settled, report.transfers_voided) == (1, 1)
    assert report.refunded_totals_restored == 3
    assert await refunded_total(redis_client, 5, paid.txn_id) == 1_000
    assert await refunded_total(redis_client, 8, other.txn_id) == 0  # voided, both
    assert await refunded_total(redis_client, 2, third.txn_id) == 60
    assert {u: await balance(redis_client, u) for u in USERS} == before | {8: before[8] + 150}
    assert await in_transit(redis_client) == 0
    check = await assert_reconciled(redis_client, db_engine)
    assert await refunds.refund(5, paid.txn_id, transfer, None, "all-back") == replace(
        settled, replayed=True
    )
    other_transfer = await received(redis_client, db_engine, 8, other)
    # Voided: their keys forgotten, so a retry with one is a new refund.
    for key, amount, voided in (("left", 150, left), ("undone", 100, undone)):
        retry = await refunds.refund(8, other.txn_id, other_transfer, amount, key)
        assert (retry.replayed, retry.amount_kopecks) == (False, amount)
        assert retry.txn_id != voided.txn_id


async def test_a_refund_of_all_that_is_left_may_credit_less_than_it_expected(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another refund landed between the read of what is left and the script: the script
    refunds what is left, less than expected; its credit gives the rest of the headroom
    back. Where the payer's ceiling refused the larger amount expected but fits what is
    left, the refund expects again rather than answer a refusal that is not so."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    await refunds.refund(5, paid.txn_id, transfer, 300)

    async def stale(self: RefundScripts, user_id: int, found: FoundTransaction) -> int:
        return 1_000  # as read before the refund of 300

    with monkeypatch.context() as patch:
        patch.setattr(RefundScripts, "_left_as_read", stale)
        rest = await refunds.refund(5, paid.txn_id, transfer, None)
    assert rest.amount_kopecks == 700
    assert await incoming(redis_client, 4) == 0
    assert await balance(redis_client, 4) == DEPOSIT_KOPECKS
    await assert_conserved(redis_client)

    again = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, again)
    await refunds.refund(5, again.txn_id, transfer, 300)
    room = 10**15 - await balance(redis_client, 4) - 800  # 700 fits, 1,000 does not
    await redis_client.hset(keyspace.user(4), "incoming_kopecks", room)
    reads: list[int] = []
    read_left = RefundScripts._left_as_read

    async def behind_once(self: RefundScripts, user_id: int, found: FoundTransaction) -> int:
        reads.append(await read_left(self, user_id, found))
        return 1_000 if len(reads) == 1 else reads[-1]

    with monkeypatch.context() as patch:
        patch.setattr(RefundScripts, "_left_as_read", behind_once)
        rest = await refunds.refund(5, again.txn_id, transfer, None, "rest")
    assert (reads, rest.amount_kopecks) == ([700, 700], 700)
    assert await incoming(redis_client, 4) == room


async def test_a_refund_that_keeps_finding_more_left_gives_up_having_moved_nothing(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)

    async def behind(self: RefundScripts, user_id: int, found: FoundTransaction) -> int:
        return 999

    monkeypatch.setattr(RefundScripts, "_left_as_read", behind)
    with refusing(refusals.REFUND_CONTENDED):
        await refunds.refund(5, paid.txn_id, transfer, None)
    assert await refunded_total(redis_client, 5, paid.txn_id) == 0
    assert await incoming(redis_client, 4) == 0
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 1_000
    await assert_conserved(redis_client)


async def test_a_void_that_finds_the_refunded_total_short_writes_nothing(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    refunds: RefundScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refunded total below the refund's reservation is a broken invariant: the void
    stops before its first write, so the reservation stays whole for an operator."""
    paid = await funded.transfer(4, 5, 1_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    undone = await refund_reserved_only(redis_client, refunds, monkeypatch, 5, transfer, 400)
    legs = CrossingLegs(redis_client)
    assert await legs.abort(4, undone.token) is None
    await redis_client.set(keyspace.refunded(5, paid.txn_id), 100)
    kinds = await stream_kinds(redis_client, 2)
    with pytest.raises(ResponseError, match="counted in its refunded total"):
        await legs.complete(2, undone.txn_id)
    assert (await reservation_of(redis_client, 2, undone.txn_id)).state == "reserved"
    assert await in_transit(redis_client) == 400
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 600
    assert await stream_kinds(redis_client, 2) == kinds


async def test_concurrent_refunds_of_one_transfer_never_exceed_it(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, refunds: RefundScripts
) -> None:
    """Twenty refunds of one transfer across buckets at once, parts and "all that is left",
    while its payer and refunder keep paying each other: the refunds add up to the transfer
    at most, the refunded total is their sum, and no kopeck is lost or invented."""
    paid = await funded.transfer(4, 5, 5_000)
    transfer = await received(redis_client, db_engine, 5, paid)
    rng = random.Random(20)
    refunded: list[int] = []
    refused: list[refusals.Refusal] = []

    async def refund(amount: int | None) -> None:
        try:
            made = await refunds.refund(5, paid.txn_id, transfer, amount)
        except Refused as refusal:
            refused.append(refusal.refusal)
        else:
            refunded.append(made.amount_kopecks)

    async def traffic() -> None:
        for _ in range(10):
            await funded.transfer(rng.choice([4, 5]), rng.choice([7, 8]), rng.randint(1, 500))

    # Parts first (at most 15 x 250 kopecks), then parts and "all that is left" together.
    await asyncio.gather(*(refund(rng.randint(1, 250)) for _ in range(15)), traffic())
    assert len(refunded) == 15
    second: list[int | None] = [None, rng.randint(1, 250), None, rng.randint(1, 250), None]
    await asyncio.gather(*(refund(a) for a in second), traffic())
    assert sum(refunded) == await refunded_total(redis_client, 5, paid.txn_id) == 5_000
    assert set(refused) <= {refusals.REFUND_EXCEEDS_TRANSFER}
    assert len(refunded) >= 16
    assert await in_transit(redis_client) == 0
    assert [await incoming(redis_client, u) for u in USERS] == [0] * len(USERS)
    await assert_conserved(redis_client)
