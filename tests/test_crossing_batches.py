"""Batches with legs across buckets (lua/transfer_batch.lua's crossing legs,
service/redis/batches.py) against a real Redis with three buckets (user u in bucket u % 3):
all or nothing, the first leg at fault named, every leg completed once the script ran, and
money conserved, counting what is in flight, at every step."""

import asyncio
import random
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.domain.refusals import Refused
from service.ledger.rebuild import rebuild
from service.redis import crossing, keyspace
from service.redis.batches import BatchAccepted, BatchScripts, Leg
from service.redis.crossing import CrossingLegs, Reservation
from service.redis.money import MoneyScripts
from service.redis.scripts import ScriptArgumentRejected
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.crossing import (
    DEPOSIT_KOPECKS,
    USERS,
    assert_conserved,
    assert_reconciled,
    assert_settled_down,
    in_transit,
    incoming,
    losing_redis_after_reservations,
    stream_kinds,
)
from tests.support.helpers import balance, lose_redis, persist, refusing

FAR_FUTURE_US = 2**52
# From 4 (bucket 1): to 7 within its bucket, to 5 (bucket 2), 6 (bucket 0), and 5 again.
LEGS = [Leg(7, 100), Leg(5, 200), Leg(6, 300), Leg(5, 400)]


@pytest.fixture
def batches(redis_client: RedisClient, settings: Settings) -> BatchScripts:
    return BatchScripts(redis_client, settings)


async def balances(redis: RedisClient) -> dict[int, int]:
    return {user_id: await balance(redis, user_id) for user_id in USERS}


def paid(legs: list[Leg]) -> dict[int, int]:
    """What the legs do to each balance."""
    moved = dict.fromkeys(USERS, DEPOSIT_KOPECKS)
    for leg in legs:
        assert leg.to_user_id is not None
        moved[4] -= leg.amount_kopecks
        moved[leg.to_user_id] += leg.amount_kopecks
    return moved


async def test_a_batch_across_buckets_moves_every_leg_once(
    redis_client: RedisClient, funded: MoneyScripts, batches: BatchScripts
) -> None:
    """Legs within the payer's bucket and across two others, one recipient twice: every leg
    applied, one id each in the order given, answered once all are credited; a replay with
    the key moves nothing and gives its own expectations back."""
    done = await batches.transfer_batch(4, LEGS, "batch-1")
    assert await balances(redis_client) == paid(LEGS)
    assert await in_transit(redis_client) == 0
    assert [await incoming(redis_client, u) for u in (5, 6)] == [0, 0]
    assert (await stream_kinds(redis_client, 1))[-7:] == [
        "transfer", "transfer_out", "transfer_out", "transfer_out",
        "transfer_settled", "transfer_settled", "transfer_settled",
    ]  # fmt: skip
    await assert_conserved(redis_client)

    again = await batches.transfer_batch(4, LEGS, "batch-1")
    assert again == BatchAccepted(done.first_txn_id, done.created_at_us, replayed=True)
    assert await balances(redis_client) == paid(LEGS)
    assert [await incoming(redis_client, u) for u in (5, 6)] == [0, 0]
    await assert_conserved(redis_client)


@pytest.mark.parametrize(
    ("legs", "refusal", "field"),
    [
        # The second leg to 5 passes 5's ceiling (set below): the first leg at fault.
        ([Leg(6, 10), Leg(5, 10), Leg(5, 60)], refusals.BALANCE_LIMIT_EXCEEDED,
         "transfers[2].amount"),
        # Funds run out at a leg within the bucket, after legs across buckets were asked.
        ([Leg(5, 10), Leg(6, 10), Leg(7, DEPOSIT_KOPECKS)], refusals.INSUFFICIENT_FUNDS,
         "transfers[2].amount"),
        # No wallet for 12 (bucket 0): the legs after it are never asked.
        ([Leg(5, 10), Leg(12, 10), Leg(6, 10)], refusals.RECIPIENT_NOT_FOUND,
         "transfers[1].to_user_id"),
        # A leg within the bucket fails before a leg across them that would too.
        ([Leg(7, DEPOSIT_KOPECKS + 1), Leg(5, 60)], refusals.INSUFFICIENT_FUNDS,
         "transfers[0].amount"),
    ],
)  # fmt: skip
async def test_a_refused_batch_across_buckets_moves_nothing(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    legs: list[Leg],
    refusal: refusals.Refusal,
    field: str,
) -> None:
    """Refused at the first leg at fault, recorded under the key, and every expectation
    given back: no balance, no transit, no headroom kept."""
    room = 10**15 - DEPOSIT_KOPECKS - 50  # 5 can take 50 kopecks more
    await redis_client.hset(keyspace.user(5), "incoming_kopecks", room)
    with refusing(refusal) as refused:
        await batches.transfer_batch(4, legs, "refused")
    assert refused.value.field == field
    with refusing(refusal) as replayed:
        await batches.transfer_batch(4, legs, "refused")
    assert (replayed.value.replayed, replayed.value.field) == (True, field)
    assert await incoming(redis_client, 5) == room
    assert await incoming(redis_client, 6) == 0
    await redis_client.hset(keyspace.user(5), "incoming_kopecks", 0)
    assert await balances(redis_client) == dict.fromkeys(USERS, DEPOSIT_KOPECKS)
    assert await in_transit(redis_client) == 0


async def test_a_batch_left_after_its_script_is_completed_by_a_retry_or_recovery(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API lost Redis after the batch's script: outcome unknown. A retry with the key
    completes every leg; another batch left so is completed by recovery past the deadline,
    every leg, none voided."""

    with losing_redis_after_reservations(monkeypatch):
        with refusing(refusals.OUTCOME_UNKNOWN):
            await batches.transfer_batch(4, LEGS, "left")
        with refusing(refusals.OUTCOME_UNKNOWN):
            await batches.transfer_batch(4, LEGS)
    await assert_conserved(redis_client)
    assert (await batches.transfer_batch(4, LEGS, "left")).replayed
    assert await CrossingLegs(redis_client).recover(FAR_FUTURE_US) == 3
    assert await balances(redis_client) == paid(LEGS + LEGS)
    assert await in_transit(redis_client) == 0
    assert [await incoming(redis_client, u) for u in (5, 6)] == [0, 0]
    await assert_conserved(redis_client)


async def test_a_batch_whose_expectations_were_fenced_off_is_not_applied(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API stalled past the expectations' deadline before the batch's script: recovery
    made "not applied" final on the payer's bucket and gave the headroom back, so the
    script does nothing: 503, no money moved."""
    expect = CrossingLegs.expect
    asked = 0

    async def slow(self: CrossingLegs, *args: Any, **kwargs: Any) -> str:
        nonlocal asked
        verdict = await expect(self, *args, **kwargs)
        asked += 1
        if asked == 3:  # the last leg across buckets: then the API stalls
            assert await self.recover(FAR_FUTURE_US) == 3
        return verdict

    monkeypatch.setattr(CrossingLegs, "expect", slow)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await batches.transfer_batch(4, LEGS)
    assert await balances(redis_client) == dict.fromkeys(USERS, DEPOSIT_KOPECKS)
    assert [await incoming(redis_client, u) for u in (5, 6)] == [0, 0]
    assert await in_transit(redis_client) == 0


async def test_the_ledger_holds_a_batch_across_buckets_and_rebuild_restores_its_key(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, batches: BatchScripts
) -> None:
    """The writers store every leg (the one within the bucket as a transaction, the others as
    their sides); reconcile is clean; after a loss of Redis, rebuild restores the batch's one
    key from legs in both tables, so a retry replays it; and a batch of legs all across
    buckets likewise."""
    mixed = await batches.transfer_batch(4, LEGS, "mixed")
    across = [Leg(5, 11), Leg(6, 12)]
    only_across = await batches.transfer_batch(4, across, "across")
    await assert_reconciled(redis_client, db_engine)
    before = await balances(redis_client)
    assert before == paid(LEGS + across)

    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert report.idempotency_keys_restored == 2
    assert report.idempotency_keys_skipped == 0
    assert await balances(redis_client) == before
    assert await batches.transfer_batch(4, LEGS, "mixed") == BatchAccepted(
        mixed.first_txn_id, mixed.created_at_us, replayed=True
    )
    assert await batches.transfer_batch(4, across, "across") == BatchAccepted(
        only_across.first_txn_id, only_across.created_at_us, replayed=True
    )
    assert await balances(redis_client) == before


async def test_a_batch_broken_by_a_lost_credit_record_keeps_its_key(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record of the first leg's credit lost (as a failover without
    WALLET_REDIS_MIN_REPLICAS can): that leg is voided, the other stands, the answer is an
    error, and the batch's key stays, so that a retry replays it instead of paying the leg
    within the bucket again."""
    legs = [Leg(5, 200), Leg(7, 100)]
    finish = CrossingLegs.finish

    async def lost_record(self: CrossingLegs, reservation: Reservation) -> str:
        await redis_client.delete(keyspace.inbound(reservation.to_user_id, reservation.token))
        return await finish(self, reservation)

    monkeypatch.setattr(CrossingLegs, "finish", lost_record)
    with refusing(refusals.INTERNAL_ERROR):
        await batches.transfer_batch(4, legs, "broken")
    assert await redis_client.exists(keyspace.idempotency(4, "broken"))
    with refusing(refusals.INTERNAL_ERROR):
        await batches.transfer_batch(4, legs, "broken")
    assert await balances(redis_client) == paid([Leg(7, 100)])
    await assert_conserved(redis_client)


@pytest.mark.parametrize("key", ["left", None])
async def test_rebuild_completes_every_leg_of_a_batch_left_after_its_script(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
    key: str | None,
) -> None:
    """Redis lost while a batch's legs across buckets were reserved and not credited:
    rebuild credits them (an expectation first), never voids one, with a key or without
    (a leg's row says it is one), and the key replays."""
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await batches.transfer_batch(4, LEGS, key)
    await persist(redis_client, db_engine)
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (report.transfers_settled, report.transfers_voided) == (3, 0)
    assert await balances(redis_client) == paid(LEGS)
    assert [await incoming(redis_client, u) for u in (5, 6)] == [0, 0]
    if key is not None:
        assert (await batches.transfer_batch(4, LEGS, key)).replayed
    await assert_reconciled(redis_client, db_engine)


async def test_a_request_that_reserved_keeps_its_record_while_a_leg_is_open(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record under the request's token has no expiry while any of its legs across
    buckets is reserved (recovery asks it before fencing an expectation off, however late),
    and gets one when the last ends."""
    finished: list[Reservation] = []

    async def held(self: CrossingLegs, reservation: Reservation) -> str:
        finished.append(reservation)
        raise RedisConnectionError("the API lost Redis after the reservation")

    with monkeypatch.context() as patch:
        patch.setattr(CrossingLegs, "finish", held)
        with refusing(refusals.OUTCOME_UNKNOWN):
            await batches.transfer_batch(4, LEGS)
    [request] = {r.request for r in finished}
    record = keyspace.request_outcome(4, request)
    legs = CrossingLegs(redis_client)
    for left_open in (2, 1, 0):
        assert await redis_client.ttl(record) == -1
        assert await legs.finish(finished[left_open]) == "settled"
        assert int(await redis_client.hget(record, "open") or -1) == left_open
    assert 0 < await redis_client.ttl(record) <= crossing.ENDED_REQUEST_TTL_S
    await assert_conserved(redis_client)


@pytest.mark.parametrize(
    "verdicts",
    [{1: "maybe", 2: "expected", 3: "expected"}, {1: "unasked", 2: "unasked", 3: "unasked"}],
)
async def test_the_batch_script_refuses_verdicts_it_cannot_take(
    redis_client: RedisClient,
    funded: MoneyScripts,
    batches: BatchScripts,
    monkeypatch: pytest.MonkeyPatch,
    verdicts: dict[int, str],
) -> None:
    """An unknown verdict, or a leg it reaches that was never asked (a bug of the caller):
    invalid, nothing written."""

    async def wrong(*args: Any) -> dict[int, str]:
        return verdicts

    monkeypatch.setattr(batches, "_expect", wrong)
    with pytest.raises(ScriptArgumentRejected):
        await batches.transfer_batch(4, LEGS)
    assert await balances(redis_client) == dict.fromkeys(USERS, DEPOSIT_KOPECKS)
    assert await in_transit(redis_client) == 0


async def test_concurrent_batches_and_transfers_across_buckets(
    redis_client: RedisClient, funded: MoneyScripts, batches: BatchScripts
) -> None:
    """Every payer sends batches across and within buckets while every user transfers: each
    batch all or nothing, no kopeck lost or invented, nothing left in flight."""
    rng = random.Random(30)
    applied: list[int] = []
    refused: list[refusals.Refusal] = []

    async def payer(user_id: int) -> None:
        for _ in range(6):
            others = [u for u in USERS if u != user_id]
            legs = [
                Leg(rng.choice(others), rng.randint(1, 9_000)) for _ in range(rng.randint(1, 5))
            ]
            try:
                if len(legs) == 1:
                    assert legs[0].to_user_id is not None
                    await funded.transfer(user_id, legs[0].to_user_id, legs[0].amount_kopecks)
                else:
                    await batches.transfer_batch(user_id, legs)
            except Refused as refusal:
                refused.append(refusal.refusal)
            else:
                applied.append(len(legs))

    await asyncio.gather(*(payer(u) for u in USERS))
    assert sum(applied) > 50
    assert set(refused) <= {refusals.INSUFFICIENT_FUNDS}
    await assert_settled_down(redis_client)
