"""Transfers across buckets (docs/scaling.md, "Across buckets"): a transfer from a user of
bucket p to a user of bucket q is four script calls, each atomic on its own bucket.

1. expect, on q (lua/transfer_expect.lua): the payee exists and has headroom under the
   ceiling, kept in incoming_kopecks; the record ``inbound:{q}:<to>:<token>`` is written;
2. reserve, on p (lua/transfer.lua across buckets): every check of a transfer, the
   Idempotency-Key, the id; the money goes from the payer into ``transit:{p}``;
3. credit, on q (lua/transfer_credit.lua): the record moves from expected to applied and
   the payee has the money; nothing can refuse it, as step 1 kept the headroom;
4. settle, on p (lua/transfer_settle.lua): the money leaves transit.

The 201 is sent after step 3, so both parties read the transfer at once. The record on q
is the fence: an abort (lua/transfer_abort.lua) moves it from expected to aborted, and
whichever of credit and abort comes first decides; a reservation whose credit was fenced
off is voided (lua/transfer_void.lua: the money back to the payer, its key forgotten).
``complete`` drives a reservation to its end from its record alone: after a reservation, on
a retry with its key, and in recovery (``recover``, beside the writer) for reservations
past their deadline, a crash having left them half-way. Money in flight is the sum of the
buckets' transit; conservation is ``sum(balances) + sum(transit) = sum(deposits)``.
"""

import logging
from dataclasses import dataclass
from typing import cast

from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

log = logging.getLogger("wallet.crossing")

# A reservation is completed or voided by recovery once this long has passed: far beyond a
# request's life (the socket timeout and the wait for a lost reply's outcome).
RESERVATION_DEADLINE_MS = 60_000
# An expectation with no reservation (the reservation was refused, or never sent) is
# aborted by recovery once this long has passed: after any reservation made under it is
# past its own deadline, so that recovery completes those rather than voids them.
EXPECTATION_DEADLINE_MS = 2 * RESERVATION_DEADLINE_MS
# How long an ended reservation or expectation is kept: a late credit must find the fence,
# and a retry with the key reads the reservation.
ENDED_RETENTION_S = 7 * 24 * 3600
# The most due reservations (and expectations) one recovery pass takes per bucket, and how
# often a pass runs (beside the writer: service/ledger/hold_sweeper.py).
RECOVERY_BATCH = 100
RECOVERY_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """``outbound:{p}:<txn_id>`` as lua/transfer.lua wrote it."""

    bucket: int
    txn_id: int
    state: str  # reserved, settled, voided
    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    token: str
    idempotency_key: str | None


class CrossingLegs:
    """The scripts of a transfer across buckets but its reservation, and what drives a
    reservation to its end."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._expect = LuaScript(redis, "transfer_expect")
        self._credit = LuaScript(redis, "transfer_credit")
        self._abort = LuaScript(redis, "transfer_abort")
        self._settle = LuaScript(redis, "transfer_settle")
        self._void = LuaScript(redis, "transfer_void")

    async def expect(self, to_user_id: int, amount_kopecks: int, token: str) -> str:
        """Step 1; what transfer.lua's reservation takes as the recipient's verdict:
        "expected", "recipient_not_found" or "balance_limit_exceeded"."""
        reply: list[bytes] = await self._expect(
            keys=self._inbound_keys(to_user_id, token),
            args=[str(to_user_id), str(amount_kopecks), token, str(EXPECTATION_DEADLINE_MS)],
        )
        verdict = reply[0].decode()
        if verdict not in ("expected", "recipient_not_found", "balance_limit_exceeded"):
            raise ScriptArgumentRejected(f"transfer_expect: {verdict}")
        return verdict

    async def abort(self, to_user_id: int, token: str) -> int | None:
        """Sets the fence; the transfer's id when its credit came first (None: aborted)."""
        reply: list[bytes] = await self._abort(
            keys=self._inbound_keys(to_user_id, token),
            args=[str(to_user_id), token, str(ENDED_RETENTION_S)],
        )
        outcome = reply[0].decode()
        if outcome == "applied":
            return int(reply[1])
        if outcome != "aborted":
            raise ScriptArgumentRejected(f"transfer_abort: {outcome}")
        return None

    async def complete(self, bucket: int, txn_id: int) -> str:
        """Drives reservation ``txn_id`` of ``bucket`` to its end: its credit (unless the
        fence was set first), then settled; or voided. Its final state: "settled",
        "voided", or "gone" when there is no such reservation."""
        reservation = await self.reservation(bucket, txn_id)
        if reservation is None:
            return "gone"
        if reservation.state != "reserved":
            return reservation.state
        if await self._credit_once(reservation):
            return await self._end(self._settle, reservation, self._outbound_keys(reservation))
        # Fenced off: the payee never had the money, and never will.
        keys = [
            *self._outbound_keys(reservation),
            keyspace.user(reservation.from_user_id),
            keyspace.txn_clock(bucket),
        ]
        if reservation.idempotency_key is not None:
            keys.append(keyspace.idempotency(reservation.from_user_id, reservation.idempotency_key))
        return await self._end(self._void, reservation, keys)

    async def reservation(self, bucket: int, txn_id: int) -> Reservation | None:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(keyspace.outbound(bucket, txn_id)))
        if not raw:
            return None
        fields = {name.decode(): value.decode() for name, value in raw.items()}
        return Reservation(
            bucket=bucket,
            txn_id=txn_id,
            state=fields["state"],
            from_user_id=int(fields["from"]),
            to_user_id=int(fields["to"]),
            amount_kopecks=int(fields["amount"]),
            token=fields["token"],
            idempotency_key=fields["idem_key"] or None,
        )

    async def recover(self, bucket: int, now_us: int) -> int:
        """One pass of recovery on ``bucket``: completes or voids the reservations past
        their deadline, and aborts the expectations past theirs (whose reservation, if any,
        was completed before). How many it ended."""
        ended = 0
        due = await self._redis.zrangebyscore(
            keyspace.outbound_due(bucket), "-inf", now_us, start=0, num=RECOVERY_BATCH
        )
        for raw in cast(list[bytes], due):
            state = await self.complete(bucket, int(raw))
            log.warning("recovery ended transfer %s across buckets: %s", raw.decode(), state)
            ended += 1
        orphans = await self._redis.zrangebyscore(
            keyspace.inbound_due(bucket), "-inf", now_us, start=0, num=RECOVERY_BATCH
        )
        for raw in cast(list[bytes], orphans):
            to_user_id, _, token = raw.decode().partition(":")
            await self.abort(int(to_user_id), token)
            ended += 1
        return ended

    async def _credit_once(self, reservation: Reservation) -> bool:
        """Step 3; False when the fence was set first."""
        to_user_id, token = reservation.to_user_id, reservation.token
        reply: list[bytes] = await self._credit(
            keys=[
                keyspace.txn_stream(keyspace.bucket_of(to_user_id)),
                keyspace.user(to_user_id),
                keyspace.inbound(to_user_id, token),
                keyspace.inbound_due(keyspace.bucket_of(to_user_id)),
                keyspace.txn_clock(keyspace.bucket_of(to_user_id)),
            ],
            args=[
                str(to_user_id),
                token,
                str(reservation.txn_id),
                str(reservation.from_user_id),
                str(reservation.amount_kopecks),
                str(ENDED_RETENTION_S),
            ],
            wait_for_replicas=True,
        )
        outcome = reply[0].decode()
        if outcome not in ("applied", "aborted"):
            raise ScriptArgumentRejected(f"transfer_credit: {outcome}")
        return outcome == "applied"

    async def _end(self, script: LuaScript, reservation: Reservation, keys: list[str]) -> str:
        reply: list[bytes] = await script(
            keys=keys, args=[str(reservation.txn_id), str(ENDED_RETENTION_S)]
        )
        state = reply[0].decode()
        # The fence orders credit and abort, so a reservation is never both settled and voided.
        assert state == ("settled" if script is self._settle else "voided"), (reservation, state)
        return state

    @staticmethod
    def _outbound_keys(reservation: Reservation) -> list[str]:
        bucket = reservation.bucket
        return [
            keyspace.txn_stream(bucket),
            keyspace.outbound(bucket, reservation.txn_id),
            keyspace.outbound_due(bucket),
            keyspace.transit(bucket),
        ]

    @staticmethod
    def _inbound_keys(to_user_id: int, token: str) -> list[str]:
        return [
            keyspace.user(to_user_id),
            keyspace.inbound(to_user_id, token),
            keyspace.inbound_due(keyspace.bucket_of(to_user_id)),
        ]
