"""``wallet rebuild`` of transfers across buckets (docs/scaling.md, "Across buckets"): what
Redis held of the transfers in flight is forgotten, and every transfer the ledger holds
half-way is put back and driven to its end at once, through the saga's own scripts:

- a reservation with no end: put back (lua/restore_reservation.lua, with its request's
  record, so that recovery never fences it off), after its credit's record where the
  ledger holds the credit (lua/restore_credit.lua), then settled. Where the ledger holds no
  credit (never applied, or lost with Redis before its writer stored it, or voided by a
  void that was lost too: the ledger cannot tell), a batch's leg is credited after an
  expectation, since its batch's other legs may stand and its key (kept by a void) makes a
  retry replay the batch; a transfer or a refund is voided, since its void, if there was
  one, told the client to try again and forgot the key, and crediting it as well could pay
  twice;
- a settle whose credit the ledger lacks (a loss of Redis's data took the credit before its
  bucket's writer stored it, while the payer's had stored the settle): put back reserved
  after an expectation of its credit (lua/transfer_expect.lua), then credited again and
  settled (the second settle record is the stored one's twin: the writer skips it);
- a credit whose reservation the ledger lacks: its record put back, then the payer debited
  again by a reservation of the same id (lua/restore_lost_reservation.lua), then settled.

What could refuse a repair (the payee's headroom, the payer's funds) is checked before the
rebuild writes anything, as is a void whose credit the ledger holds (the money paid to
both: a bug, for an operator). Run with the API stopped, as the rest of the rebuild.
"""

import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransferCredit, LedgerTransferReservation
from service.domain.amounts import MAX_BALANCE_KOPECKS
from service.domain.times import us_from_datetime
from service.ledger.crossing_totals import (
    UNEVEN_FINDINGS,
    in_transit,
    reservations_in_transit,
    uncredited_legs_and_captures,
    uneven_sides,
)
from service.ledger.hold_totals import incoming_of_payees, pending_holds_of_payers
from service.ledger.rebuild_errors import RebuildRefused
from service.ledger.reconcile import ledger_balances
from service.redis import keyspace
from service.redis.crossing import (
    ENDED_REQUEST_TTL_S,
    ENDED_RETENTION_S,
    CrossingLegs,
    Reservation,
    ReservationStuck,
    leg_token,
)
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

logger = logging.getLogger("wallet.rebuild")

BATCH_SIZE = 1000
R = LedgerTransferReservation
C = LedgerTransferCredit


@dataclass(frozen=True, slots=True)
class HalfWay:
    """The transfers the ledger holds with one side missing, each as the stored side's
    row: settles without their credit (reservation rows), credits without their
    reservation (credit rows)."""

    uncredited: list[Any]
    unreserved: list[Any]


@dataclass(slots=True)
class Completed:
    settled: int = 0
    voided: int = 0
    stuck: int = 0  # left reserved for an operator (ReservationStuck), logged


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
        state, payer, request = cast(
            list[bytes | None], await redis.hmget(record, "state", "from", "request")
        )
        if state == b"reserved":
            await redis.delete(record)
            if payer is not None and request is not None:
                # Its request's record, kept while it was open, expires as once it ends.
                request_key = keyspace.request_outcome(int(payer), request.decode())
                await redis.expire(request_key, ENDED_REQUEST_TTL_S)
    await redis.delete(inbound_due, outbound_due)


async def half_way_transfers(engine: AsyncEngine) -> HalfWay:
    """The transfers with a side missing, once every repair is known to be possible:
    RebuildRefused (before anything is written) for a void with its credit, a payee
    without the headroom for a credit made again, or a payer without the available money
    for a reservation made again."""
    async with engine.connect() as connection:
        sides = await uneven_sides(connection)
        for side in sides:
            if side.finding == "voided_with_credit":
                raise RebuildRefused(
                    f"transfer {side.txn_id} across buckets is"
                    f" {UNEVEN_FINDINGS[side.finding]}. Nothing was changed."
                )
        ids = {finding: [s.txn_id for s in sides if s.finding == finding] for finding in
               ("settled_without_credit", "credit_without_reservation")}  # fmt: skip
        uncredited = list(
            await connection.execute(select(R).where(R.id.in_(ids["settled_without_credit"])))
        )
        unreserved = list(
            await connection.execute(
                select(C).where(C.transfer_id.in_(ids["credit_without_reservation"]))
            )
        )
        credits: dict[int, int] = defaultdict(int, await uncredited_legs_and_captures(connection))
        debits: dict[int, int] = defaultdict(int)
        for reservation in uncredited:
            credits[reservation.to_user_id] += reservation.amount_kopecks
        for credit in unreserved:
            debits[credit.from_user_id] += credit.amount_kopecks
        users = sorted(credits.keys() | debits.keys())
        balances = await ledger_balances(connection, users)
        held = await pending_holds_of_payers(connection, users)
        # As rebuilt: with the expectations of holds across buckets made again.
        incoming = await incoming_of_payees(connection, users, every_bucket=True)
    for user_id, kopecks in credits.items():
        if balances[user_id] + incoming[user_id] + kopecks > MAX_BALANCE_KOPECKS:
            raise RebuildRefused(
                f"user {user_id} cannot be credited again the {kopecks} kopecks of transfers"
                " across buckets whose credit the ledger lacks: the balance would pass its"
                " limit. Nothing was changed."
            )
    for user_id, kopecks in debits.items():
        available = balances[user_id] - sum(hold.amount_kopecks for hold in held[user_id])
        if available < kopecks:
            raise RebuildRefused(
                f"user {user_id} cannot be debited again the {kopecks} kopecks of transfers"
                f" across buckets whose reservation the ledger lacks: {available} available."
                " Nothing was changed."
            )
    return HalfWay(uncredited=uncredited, unreserved=unreserved)


async def complete_transfers_half_way(
    redis: RedisClient, engine: AsyncEngine, half_way: HalfWay
) -> Completed:
    """Sets each bucket's transit:{b} to what the transfers half-way keep there, then puts
    each back and ends it (the module's docstring)."""
    restore = await _Restore.start(redis)
    async with engine.connect() as connection:
        for bucket in keyspace.all_buckets():
            kopecks, _ = await in_transit(connection, bucket)
            kopecks += sum(
                row.amount_kopecks
                for row in half_way.uncredited
                if keyspace.bucket_of(row.from_user_id) == bucket
            )
            await redis.set(keyspace.transit(bucket), kopecks)
    after_id = 0
    while True:
        async with engine.connect() as connection:
            rows = await reservations_in_transit(connection, after_id, BATCH_SIZE)
        if not rows:
            break
        for row in rows:
            request, token = _tokens(row)
            if row.credited_at is not None:
                await restore.credit(row.id, row.to_user_id, row.amount_kopecks, token,
                                     us_from_datetime(row.credited_at))  # fmt: skip
            elif row.batch_leg is not None or row.hold_id is not None:
                # A batch's leg, or a hold's capture: credited, not voided (the batch's other
                # legs, the hold's capture, stand).
                await restore.expectation(row, token, request)
            await restore.end(await restore.reservation(row, token, request))
        after_id = rows[-1].id
    for row in half_way.uncredited:
        request, token = _tokens(row)
        await restore.expectation(row, token, request)
        await restore.end(await restore.reservation(row, token, request))
    for row in half_way.unreserved:
        token = secrets.token_urlsafe(16)
        await restore.credit(row.transfer_id, row.to_user_id, row.amount_kopecks, token,
                             us_from_datetime(row.credited_at))  # fmt: skip
        await restore.end(await restore.lost_reservation(row, token))
    return restore.completed


class _Restore:
    """The scripts that put a transfer across buckets back, each checked, and its end."""

    def __init__(self, redis: RedisClient, now_us: int) -> None:
        self._reservation = LuaScript(redis, "restore_reservation")
        self._credit = LuaScript(redis, "restore_credit")
        self._lost = LuaScript(redis, "restore_lost_reservation")
        self._legs = CrossingLegs(redis)
        self._now_us = now_us
        self.completed = Completed()

    @classmethod
    async def start(cls, redis: RedisClient) -> "_Restore":
        seconds, micros = await redis.time()
        return cls(redis, seconds * 1_000_000 + micros)

    async def credit(
        self, txn_id: int, to_user_id: int, amount_kopecks: int, token: str, credited_at_us: int
    ) -> None:
        """The record of a credit the ledger holds, applied."""
        reply = await self._credit(
            keys=[keyspace.inbound(to_user_id, token)],
            args=[str(to_user_id), token, str(txn_id), str(amount_kopecks), str(credited_at_us),
                  str(ENDED_RETENTION_S)],
        )  # fmt: skip
        _check(reply, b"restored", "restore_credit", txn_id)

    async def expectation(self, row: Any, token: str, request: str) -> None:
        """An expectation of the credit of a reservation (a transfer_reservations row) to
        make again (its headroom checked before)."""
        verdict = await self._legs.expect(
            row.from_user_id, row.to_user_id, row.amount_kopecks, token, request
        )
        if verdict != "expected":
            raise ScriptArgumentRejected(f"transfer_expect of transfer {row.id}: {verdict}")

    async def reservation(self, row: Any, token: str, request: str) -> Reservation:
        """A reservation the ledger holds (a transfer_reservations row), reserved again,
        under ``request``'s record (kept open)."""
        bucket = keyspace.bucket_of(row.from_user_id)
        created_at_us = us_from_datetime(row.created_at)
        # A capture's key is its payee's (restored from the row: service/ledger/rebuild_keys.py),
        # which a void must not forget in the payer's name.
        payers_key = row.idempotency_key if row.hold_id is None else None
        reply = await self._reservation(
            keys=[keyspace.outbound(bucket, row.id), keyspace.outbound_due(bucket),
                  keyspace.user(row.from_user_id),
                  keyspace.request_outcome(row.from_user_id, request)],
            args=[str(row.id), str(row.from_user_id), str(row.to_user_id),
                  str(row.amount_kopecks), token, str(created_at_us),
                  str(row.from_balance_after_kopecks), payers_key or "",
                  str(self._now_us), _optional(row.refund_of), request,
                  _optional(row.hold_id)],
        )  # fmt: skip
        _check(reply, b"restored", "restore_reservation", row.id)
        batch_request = request if request != token else None
        return Reservation.reserved(row.id, created_at_us, row.from_user_id, row.to_user_id,
                                    row.amount_kopecks, token, payers_key, row.refund_of,
                                    batch_request, row.hold_id)  # fmt: skip

    async def lost_reservation(self, credit: Any, token: str) -> Reservation:
        """The reservation of a credit the ledger holds (a transfer_credits row), made
        again: the payer debited (the funds checked before)."""
        bucket = keyspace.bucket_of(credit.from_user_id)
        txn_id = credit.transfer_id
        reply = await self._lost(
            keys=[keyspace.txn_stream(bucket), keyspace.outbound(bucket, txn_id),
                  keyspace.outbound_due(bucket), keyspace.transit(bucket),
                  keyspace.user(credit.from_user_id), keyspace.txn_clock(bucket),
                  keyspace.request_outcome(credit.from_user_id, token)],
            args=[str(txn_id), str(credit.from_user_id), str(credit.to_user_id),
                  str(credit.amount_kopecks), token, str(self._now_us),
                  _optional(credit.refund_of), _optional(credit.hold_id)],
        )  # fmt: skip
        _check(reply, b"restored", "restore_lost_reservation", txn_id)
        return Reservation.reserved(txn_id, self._now_us, credit.from_user_id,
                                    credit.to_user_id, credit.amount_kopecks, token, None,
                                    credit.refund_of, hold_id=credit.hold_id)  # fmt: skip

    async def end(self, reservation: Reservation) -> None:
        """Settled or voided now, as recovery would; one whose credit's record may have
        expired is left reserved, for an operator (recovery logs it each hour too)."""
        try:
            outcome = await self._legs.finish(reservation)
        except ReservationStuck as stuck:
            logger.critical("%s: left in transit for an operator", stuck)
            self.completed.stuck += 1
            return
        if outcome == "settled":
            self.completed.settled += 1
        else:
            assert outcome == "voided", (reservation, outcome)
            self.completed.voided += 1


def _tokens(row: Any) -> tuple[str, str]:
    """``(request, token)`` for a reservation put back: a new request, and its token, which
    for a batch's leg is a leg's of it, so that it stays one (lua/transfer_void.lua)."""
    request = secrets.token_urlsafe(16)
    return request, request if row.batch_leg is None else leg_token(request, row.batch_leg)


def _optional(txn_id: int | None) -> str:
    return "" if txn_id is None else str(txn_id)


def _check(reply: Any, outcome: bytes, script: str, txn_id: int) -> None:
    if reply != [outcome]:
        raise ScriptArgumentRejected(f"{script} of transfer {txn_id}: {reply!r}")
