"""``wallet rebuild`` of transfers across buckets (docs/scaling.md, "Across buckets"): what
Redis held of the transfers in flight is forgotten, and the ledger's reservations with no
end are put back in transit, for recovery to settle (where the ledger holds the credit) or
void (where it does not: the credit was never applied, or was lost with Redis before its
writer stored it, and the payee's rebuilt balance does not have it either).

Run with the API stopped, as the rest of the rebuild.
"""

import secrets
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.models import LedgerTransferCredit, LedgerTransferReservation
from service.domain.times import us_from_datetime
from service.ledger.crossing_totals import (
    UNEVEN_FINDINGS,
    UnevenSide,
    in_transit,
    reservations_in_transit,
    uneven_sides,
)
from service.ledger.rebuild_errors import RebuildRefused
from service.redis import keyspace
from service.redis.crossing import ENDED_RETENTION_S, CrossingLegs
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

R = LedgerTransferReservation
C = LedgerTransferCredit

BATCH_SIZE = 1000


async def forget_transfers_in_flight(redis: RedisClient, bucket: int) -> None:
    """Drops what the bucket holds of transfers across buckets in flight, all of which
    comes back from the ledger: its expectations not applied yet (their headroom goes with
    the wallets' incoming_kopecks, rewritten from the ledger: an expectation is no ledger
    record), its reservations not ended (put back under new tokens) and both due sets."""
    inbound_due, outbound_due = keyspace.inbound_due(bucket), keyspace.outbound_due(bucket)
    for member in cast(list[bytes], await redis.zrange(inbound_due, 0, -1)):
        to_user_id, _, token = member.decode().partition(":")
        record = keyspace.inbound(int(to_user_id), token)
        if await redis.hget(record, "state") == b"expected":
            await redis.delete(record)
    for member in cast(list[bytes], await redis.zrange(outbound_due, 0, -1)):
        record = keyspace.outbound(bucket, int(member))
        if await redis.hget(record, "state") == b"reserved":
            await redis.delete(record)
    await redis.delete(inbound_due, outbound_due)


async def refuse_over_a_void_with_its_credit(engine: AsyncEngine) -> None:
    """A void whose credit the ledger holds too paid the money to both parties: a bug
    for an operator, which no rebuild can settle."""
    async with engine.connect() as connection:
        for bucket in keyspace.all_buckets():
            for side in await uneven_sides(connection, bucket, None, limit=None):
                if side.finding == "voided_with_credit":
                    raise RebuildRefused(
                        f"transfer {side.txn_id} across buckets is {UNEVEN_FINDINGS[side.finding]}."
                        " Nothing was changed."
                    )


async def restore_transfers_in_transit(redis: RedisClient, engine: AsyncEngine) -> int:
    """Puts back every transfer across buckets the ledger holds half-way, due at once for
    recovery to end, after setting each bucket's transit:{b} to what they keep there:

    - a reservation with no end (lua/restore_reservation.lua), its credit's record first
      where the ledger holds the credit (lua/restore_credit.lua), so that recovery never
      finds the reservation without it: settled then, else voided;
    - a settle whose credit the ledger lacks (a loss of Redis's data took the credit before
      its bucket's writer stored it): the reservation put back reserved, after an
      expectation of its credit (lua/transfer_expect.lua), so that recovery credits the
      payee again;
    - a credit whose reservation the ledger lacks: its record first, then the payer debited
      again by a reservation of the same id (lua/restore_lost_reservation.lua).

    Returns how many were put back."""
    restore = _Restore(redis)
    await restore.start()
    async with engine.connect() as connection:
        half_way = [
            side
            for bucket in keyspace.all_buckets()
            for side in await uneven_sides(connection, bucket, None, limit=None)
        ]
        uncredited = await _rows(connection, R, R.id, half_way, "settled_without_credit")
        unreserved = await _rows(
            connection, C, C.transfer_id, half_way, "credit_without_reservation"
        )
        for bucket in keyspace.all_buckets():
            kopecks, _ = await in_transit(connection, bucket)
            kopecks += sum(
                r.amount_kopecks for r in uncredited if keyspace.bucket_of(r.from_user_id) == bucket
            )
            await redis.set(keyspace.transit(bucket), kopecks)
    after_id = 0
    while True:
        async with engine.connect() as connection:
            rows = await reservations_in_transit(connection, after_id, BATCH_SIZE)
        if not rows:
            break
        for reservation in rows:
            token = secrets.token_urlsafe(16)
            if reservation.credited_at is not None:
                await restore.credit(reservation, token, reservation.credited_at)
            await restore.reservation(reservation, token)
        after_id = rows[-1].id
    for reservation in uncredited:
        token = secrets.token_urlsafe(16)
        await restore.expectation(reservation, token)
        await restore.reservation(reservation, token)
    for credit in unreserved:
        token = secrets.token_urlsafe(16)
        await restore.credit(credit, token, credit.credited_at)
        await restore.lost_reservation(credit, token)
    return restore.count


async def _rows(
    connection: AsyncConnection, model: Any, key: Any, sides: list[UnevenSide], finding: str
) -> list[Any]:
    ids = sorted(side.txn_id for side in sides if side.finding == finding)
    if not ids:
        return []
    return list((await connection.execute(select(model).where(key.in_(ids)))).all())


class _Restore:
    """The scripts that put a transfer across buckets back, each checked."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._reservation = LuaScript(redis, "restore_reservation")
        self._credit = LuaScript(redis, "restore_credit")
        self._lost = LuaScript(redis, "restore_lost_reservation")
        self._legs = CrossingLegs(redis)
        self.now_us = 0
        self.count = 0

    async def start(self) -> None:
        seconds, micros = await self._redis.time()
        self.now_us = seconds * 1_000_000 + micros

    async def credit(self, side: Any, token: str, credited_at: datetime) -> None:
        """The record of a credit the ledger holds, applied (a reservation's row or a
        credit's: both name the payee, the amount and the transfer)."""
        txn_id = getattr(side, "transfer_id", None) or side.id
        reply = await self._credit(
            keys=[keyspace.inbound(side.to_user_id, token)],
            args=[str(side.to_user_id), token, str(txn_id), str(side.amount_kopecks),
                  str(us_from_datetime(credited_at)), str(ENDED_RETENTION_S)],
        )  # fmt: skip
        _check(reply, [b"restored"], "restore_credit", txn_id)

    async def expectation(self, reservation: Any, token: str) -> None:
        verdict = await self._legs.expect(reservation.to_user_id, reservation.amount_kopecks, token)
        if verdict != "expected":
            raise RebuildRefused(
                f"the credit of transfer {reservation.id} across buckets, settled but not"
                f" credited in the ledger, cannot be made again: {verdict}. The rebuild"
                " stopped there; run it again once the payee's wallet allows it."
            )

    async def reservation(self, reservation: Any, token: str) -> None:
        bucket = keyspace.bucket_of(reservation.from_user_id)
        reply = await self._reservation(
            keys=[keyspace.outbound(bucket, reservation.id), keyspace.outbound_due(bucket),
                  keyspace.user(reservation.from_user_id)],
            args=[str(reservation.id), str(reservation.from_user_id),
                  str(reservation.to_user_id), str(reservation.amount_kopecks), token,
                  str(us_from_datetime(reservation.created_at)),
                  str(reservation.from_balance_after_kopecks),
                  reservation.idempotency_key or "", str(self.now_us)],
        )  # fmt: skip
        _check(reply, [b"restored", token.encode()], "restore_reservation", reservation.id)
        self.count += 1

    async def lost_reservation(self, credit: Any, token: str) -> None:
        bucket = keyspace.bucket_of(credit.from_user_id)
        reply = await self._lost(
            keys=[keyspace.txn_stream(bucket), keyspace.outbound(bucket, credit.transfer_id),
                  keyspace.outbound_due(bucket), keyspace.transit(bucket),
                  keyspace.user(credit.from_user_id), keyspace.txn_clock(bucket)],
            args=[str(credit.transfer_id), str(credit.from_user_id), str(credit.to_user_id),
                  str(credit.amount_kopecks), token, str(self.now_us)],
        )  # fmt: skip
        if reply == [b"insufficient_funds"]:
            raise RebuildRefused(
                f"the reservation of transfer {credit.transfer_id} across buckets, credited"
                f" but not reserved in the ledger, cannot be made again: user"
                f" {credit.from_user_id} has less than {credit.amount_kopecks} kopecks."
                " The rebuild stopped there."
            )
        _check(reply, [b"restored"], "restore_lost_reservation", credit.transfer_id)
        self.count += 1


def _check(reply: Any, wanted: list[bytes], script: str, txn_id: int) -> None:
    if reply != wanted:
        raise ScriptArgumentRejected(f"{script} of transfer {txn_id}: {reply!r}")
