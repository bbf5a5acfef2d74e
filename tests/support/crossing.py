"""What the tests of transfers, refunds and batches across buckets share: three buckets (user
u in bucket u % 3, tests/conftest.py's ``several_buckets``), funded users, money in flight
read from the records, an API that loses Redis after a reservation, and the checks once
the money settled down."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.ledger.reconcile import ReconcileReport, format_report, reconcile
from service.redis import keyspace
from service.redis.crossing import CrossingLegs, Reservation
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from tests.support.helpers import StreamEntries, balance, persist, refusing

# Payers and payees in three buckets: 1, 4, 7 in bucket 1; 2, 5, 8 in 2; 3, 6, 9 in 0.
USERS = list(range(1, 10))
DEPOSIT_KOPECKS = 100_000


async def in_transit(redis: RedisClient) -> int:
    return sum([int(await redis.get(keyspace.transit(b)) or 0) for b in keyspace.all_buckets()])


async def incoming(redis: RedisClient, user_id: int) -> int:
    return int(await redis.hget(keyspace.user(user_id), "incoming_kopecks") or 0)


async def in_flight(redis: RedisClient) -> int:
    """The money of reservations whose credit is not applied: the payer has it no more, the
    payee not yet. (transit:{b} counts a reservation until it is settled, one step after
    its credit.)"""
    reserved_kopecks = 0
    flying_kopecks = 0
    async for key in redis.scan_iter(match="outbound:{b*}:*"):
        if key.startswith(b"outbound:due:"):
            continue
        record = cast(dict[bytes, bytes], await redis.hgetall(key))
        if record[b"state"] != b"reserved":
            continue
        amount = int(record[b"amount"])
        reserved_kopecks += amount
        inbound = keyspace.inbound(int(record[b"to"]), record[b"token"].decode())
        if await redis.hget(inbound, "state") != b"applied":
            flying_kopecks += amount
    assert reserved_kopecks == await in_transit(redis)
    return flying_kopecks


async def assert_conserved(redis: RedisClient) -> None:
    balances = [await balance(redis, u) for u in USERS]
    assert min(balances) >= 0
    assert sum(balances) + await in_flight(redis) == DEPOSIT_KOPECKS * len(USERS)


async def assert_settled_down(redis: RedisClient) -> None:
    """Money conserved, and nothing left in flight: no transit, no headroom kept, nothing due."""
    await assert_conserved(redis)
    assert await in_transit(redis) == 0
    assert [await incoming(redis, u) for u in USERS] == [0] * len(USERS)
    for bucket in keyspace.all_buckets():
        assert await redis.zcard(keyspace.outbound_due(bucket)) == 0
        assert await redis.zcard(keyspace.inbound_due(bucket)) == 0


async def reservation_of(redis: RedisClient, bucket: int, txn_id: int) -> Reservation:
    reservation = await CrossingLegs(redis).reservation(bucket, txn_id)
    assert reservation is not None, (bucket, txn_id)
    return reservation


@contextmanager
def losing_redis_after_reservations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within it, the API loses Redis right after each reservation it makes (a crash
    between the legs, for what Redis holds): its requests answer outcome_unknown."""

    async def lost(self: CrossingLegs, reservation: Reservation) -> str:
        raise RedisConnectionError("the API lost Redis after the reservation")

    with monkeypatch.context() as patch:
        patch.setattr(CrossingLegs, "finish", lost)
        yield


async def only_due_reservation(redis: RedisClient, bucket: int) -> Reservation:
    [raw] = cast(list[bytes], await redis.zrange(keyspace.outbound_due(bucket), 0, -1))
    return await reservation_of(redis, bucket, int(raw))


async def reserved_only(
    redis: RedisClient,
    money: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
    from_user_id: int,
    to_user_id: int,
    amount_kopecks: int,
    idempotency_key: str | None = None,
) -> Reservation:
    """A transfer whose API lost Redis right after the reservation: answered
    outcome_unknown. Its reservation, the only one due in the payer's bucket."""
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await money.transfer(from_user_id, to_user_id, amount_kopecks, idempotency_key)
    return await only_due_reservation(redis, keyspace.bucket_of(from_user_id))


async def assert_reconciled(redis: RedisClient, engine: AsyncEngine) -> ReconcileReport:
    """Once the writers stored everything, `wallet reconcile` is clean."""
    await persist(redis, engine)
    check = await reconcile(redis, engine, wait_for_writer_s=1)
    assert check.ok, format_report(check)
    return check


async def voided_transfer(
    redis: RedisClient, money: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> Reservation:
    """A transfer of 40 kopecks from 4 to 5 left after its reservation, its credit fenced
    off, then voided: the money back to 4."""
    undone = await reserved_only(redis, money, monkeypatch, 4, 5, 40)
    legs = CrossingLegs(redis)
    assert await legs.abort(5, undone.token) is None
    assert await legs.complete(1, undone.txn_id) == "voided"
    return undone


async def stream_kinds(redis: RedisClient, bucket: int) -> list[str]:
    entries = cast(StreamEntries, await redis.xrange(keyspace.txn_stream(bucket)))
    return [fields[b"kind"].decode() for _, fields in entries]
