"""Transfers across buckets (docs/scaling.md, "Across buckets"): a transfer from a user of
bucket p to a user of bucket q is four script calls, each atomic on its own bucket.

1. expect, on q (lua/transfer_expect.lua): the payee exists and has headroom under the
   ceiling, kept in incoming_kopecks; the record ``inbound:{q}:<to>:<token>`` is written;
2. reserve, on p (lua/transfer.lua across buckets): every check of a transfer, the
   Idempotency-Key, the id; the money goes from the payer into ``transit:{p}``;
3. credit, on q (lua/transfer_credit.lua): the record moves from expected to applied and
   the payee has the money; nothing can refuse it, as step 1 kept the headroom;
4. settle, on p (lua/transfer_settle.lua): the money leaves transit.

The 201 is sent after step 4 (the credit applied, the reservation settled), so both
parties read the transfer at once. The record on q
is the fence: an abort (lua/transfer_abort.lua) moves it from expected to aborted, and
whichever of credit and abort comes first decides; a reservation whose credit was fenced
off is voided (lua/transfer_void.lua: the money back to the payer, its key forgotten).
Recovery fences off only an expectation whose request the payer's bucket says never
reserved (``_recover_expectation``), so a reservation that was made is credited, whatever
the timing. A refund across buckets (service/redis/refunds.py), a batch's legs to other
buckets (service/redis/batches.py) and the capture of a hold across buckets
(service/redis/holds_across.py, whose expectation lives as long as the hold) are the same
saga.
``finish`` drives a reservation to its end from its record alone: after a reservation, on
a retry with its key (``complete`` reads the record), and in recovery (``recover``, beside
the writer) for reservations past their deadline, a crash having left them half-way.

Money in flight is what reservations hold whose credit is not applied: the payer has it no
more, the payee not yet. Conservation is ``sum(balances) + in flight = sum(deposits)``.
``transit:{p}`` counts a reservation until it is settled, one step after its credit, so
between the two the amount is in both; in flight is transit less the reservations whose
credit is applied (tests/test_crossing.py's ``in_flight`` reads it from the records).
"""

import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from service.domain import refusals
from service.domain.refusals import Refused
from service.outages import is_outage
from service.redis import keyspace
from service.redis.request_lookup import RequestLookup
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
# How long the record of a request that reserved across buckets is kept once its last
# reservation ended (until then it has no expiry: lua/includes/request_outcome.lua): as long
# as WALLET_REQUEST_OUTCOME_TTL_S may be, for a lookup of a lost reply.
ENDED_REQUEST_TTL_S = 3600
# The most due reservations (and expectations) one recovery pass takes per bucket, and how
# often a pass runs (beside the writer: service/ledger/hold_sweeper.py).
RECOVERY_BATCH = 100
RECOVERY_INTERVAL_S = 1.0
# When an entry recovery could not end is tried again: after an outage of its buckets, and
# after a fault that needs an operator (logged at CRITICAL each time).
RECOVERY_RETRY_S = 10
RECOVERY_FAULT_RETRY_S = 3600


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
    created_at_us: int
    # A refund across buckets (lua/refund.lua): the transfer it refunds; None for a transfer.
    refund_of: int | None = None
    # The token of the request that made it, where that is not ``token``: a batch's leg
    # (``leg_token``), or a hold's capture (``token`` is then the hold's expectation's).
    request_token: str | None = None
    # A hold's capture across buckets (lua/hold_capture_across.lua): the hold captured.
    hold_id: int | None = None

    @property
    def request(self) -> str:
        return self.request_token or self.token

    @property
    def batch_leg(self) -> bool:
        return self.request != self.token and self.hold_id is None

    @classmethod
    def reserved(
        cls,
        txn_id: int,
        created_at_us: int,
        from_user_id: int,
        to_user_id: int,
        amount_kopecks: int,
        token: str,
        idempotency_key: str | None,
        refund_of: int | None = None,
        request_token: str | None = None,
        hold_id: int | None = None,
    ) -> "Reservation":
        """One just made, or put back, in its payer's bucket: still to be credited."""
        return cls(
            bucket=keyspace.bucket_of(from_user_id),
            txn_id=txn_id,
            state="reserved",
            from_user_id=from_user_id,
            to_user_id=to_user_id,
            amount_kopecks=amount_kopecks,
            token=token,
            idempotency_key=idempotency_key,
            created_at_us=created_at_us,
            refund_of=refund_of,
            request_token=request_token,
            hold_id=hold_id,
        )


def leg_token(request_token: str, leg_index: int) -> str:
    """The token of a batch leg's expectation and reservation (lua/transfer_batch.lua)."""
    return f"{request_token}-{leg_index}"


class ReservationStuck(RuntimeError):
    """A reservation older than half the time its credit's record is kept, whose record is
    gone: it may have been applied and expired. Left reserved for an operator (voiding it
    could pay twice); logged by recovery at CRITICAL each time it is tried (hourly)."""

    def __init__(self, reservation: "Reservation") -> None:
        super().__init__(
            f"transfer {reservation.txn_id} across buckets has been reserved since"
            f" {reservation.created_at_us} µs and its credit's record is gone"
        )


class CrossingInvariantBroken(RuntimeError):
    """A reservation found settled where it was voided, or the reverse: a bug."""


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
        self._lookup = RequestLookup(redis)

    async def expect(
        self,
        from_user_id: int,
        to_user_id: int,
        amount_kopecks: int,
        token: str,
        request_token: str | None = None,
        hold_expires_in_s: int | None = None,
    ) -> str:
        """Step 1; what the reservation takes as the recipient's verdict: "expected",
        "recipient_not_found" or "balance_limit_exceeded". ``token`` names the record: the
        request's token (``request_token``, the default), or a batch leg's. A hold's
        (``hold_expires_in_s``: its life) is due only once the hold may have ended."""
        deadline_ms = EXPECTATION_DEADLINE_MS
        if hold_expires_in_s is not None:
            deadline_ms += hold_expires_in_s * 1000
        args = [str(to_user_id), str(amount_kopecks), token, str(deadline_ms)]
        hold_flag = "0" if hold_expires_in_s is None else "1"
        args += [str(from_user_id), request_token or token, hold_flag]
        reply: list[bytes] = await self._expect(
            keys=self._inbound_keys(to_user_id, token), args=args, wait_for_replicas=True
        )
        verdict = reply[0].decode()
        if verdict not in ("expected", "recipient_not_found", "balance_limit_exceeded"):
            raise ScriptArgumentRejected(f"transfer_expect: {verdict}")
        return verdict

    async def abort(self, to_user_id: int, token: str, unused: bool = False) -> int | None:
        """Sets the fence; the transfer's id when its credit came first (None: aborted).
        ``unused``: no reservation was or will be made under the token, so the expectation
        goes without a tombstone (lua/transfer_abort.lua)."""
        reply: list[bytes] = await self._abort(
            keys=self._inbound_keys(to_user_id, token),
            args=[str(to_user_id), token, str(ENDED_RETENTION_S), "1" if unused else "0"],
            wait_for_replicas=True,
        )
        outcome = reply[0].decode()
        if outcome == "applied":
            return int(reply[1])
        if outcome != "aborted":
            raise ScriptArgumentRejected(f"transfer_abort: {outcome}")
        return None

    async def conclude(self, made: Reservation, replayed: bool, verdict: str) -> None:
        """After a request's reservation was accepted (``made``: its id and instant; or,
        ``replayed``, those of an earlier request with its key): ``drive``, and a replay
        gives back the headroom this request's expectation kept. Raises Refused as
        ``drive`` does, and TRANSFER_UNDONE when it was voided (its credit's record was
        gone: lost in a failover without WALLET_REDIS_MIN_REPLICAS)."""
        if replayed and verdict == "expected":
            await self.drop_unused(made.to_user_id, made.token)
        if await self.drive(made, replayed) == "voided":
            raise Refused(refusals.TRANSFER_UNDONE)

    async def drive(self, made: Reservation, replayed: bool) -> str:
        """The credit and the settle of a request's reservation, done before the request is
        answered, so that both parties read it at once; a replay completes the earlier
        request's reservation if a crash left it half-way. Its end: "settled" or
        "voided". Raises Refused(OUTCOME_UNKNOWN) when the buckets could not be reached (a
        retry with the key, or recovery, completes it)."""
        try:
            if replayed:
                return await self.complete(made.bucket, made.txn_id)
            return await self.finish(made)
        except Exception as error:
            if not is_outage(error):
                raise
            # Reserved, perhaps credited (a credit the replicas did not confirm may be taken
            # back by a failover).
            log.warning("a transfer across buckets was left half-way (%r)", error)
            raise Refused(refusals.OUTCOME_UNKNOWN) from None

    async def drop_unused(self, to_user_id: int, token: str) -> None:
        """Gives back the headroom a request's expectation kept when no reservation uses
        it, nor ever will (refused, or a replay; a hold voided or expired), leaving nothing
        behind; on an outage recovery does, after its deadline, and the request's own
        answer stands."""
        try:
            await self.abort(to_user_id, token, unused=True)
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("an unused expectation is left to recovery (%r)", error)

    async def complete(self, bucket: int, txn_id: int) -> str:
        """Drives reservation ``txn_id`` of ``bucket`` to its end (``finish``), read from
        its record; "gone" when there is no such reservation."""
        reservation = await self.reservation(bucket, txn_id)
        if reservation is None:
            return "gone"
        return await self.finish(reservation)

    async def finish(self, reservation: Reservation) -> str:
        """Its credit, unless the fence was set first, then settled; or voided. The final
        state: "settled" or "voided". Every write it makes is on the replicas before it
        returns (with WALLET_REDIS_MIN_REPLICAS), so a failover cannot take back the fence
        that a void rests on, nor the settle or void itself."""
        if reservation.state != "reserved":
            return reservation.state
        credit = await self._apply_credit(reservation)
        if credit == "gone" and self._older_than_its_records(reservation):
            # Its credit's record may have ended and expired: voiding could pay twice.
            raise ReservationStuck(reservation)
        if credit != "applied":
            # Aborted by another connection, whose write the replicas may not have yet, or
            # missing: an abort of this connection's own writes the tombstone and waits.
            applied = await self.abort(reservation.to_user_id, reservation.token)
            credit = "aborted" if applied is None else "applied"
        if credit == "applied":
            keys = [*self._outbound_keys(reservation), self._request_key(reservation)]
            return await self._end(self._settle, "settled", reservation, keys)
        if reservation.batch_leg or reservation.hold_id is not None:
            # Only a lost record of its credit gets here: the batch is broken, or the hold
            # stays captured while its money goes back to the payer.
            log.critical("voiding %s, whose batch or hold stands", reservation)
        keys = [
            *self._outbound_keys(reservation),
            keyspace.user(reservation.from_user_id),
            keyspace.txn_clock(reservation.bucket),
            self._request_key(reservation),
        ]
        if reservation.refund_of is not None:
            # The void gives back what the refund took of the refunded total.
            keys.append(keyspace.refunded(reservation.from_user_id, reservation.refund_of))
        if reservation.idempotency_key is not None:
            keys.append(keyspace.idempotency(reservation.from_user_id, reservation.idempotency_key))
        return await self._end(self._void, "voided", reservation, keys)

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
            created_at_us=int(fields["created_at_us"]),
            refund_of=int(fields["refund_of"]) if "refund_of" in fields else None,
            request_token=fields["request"] if fields["request"] != fields["token"] else None,
            hold_id=int(fields["hold_id"]) if "hold_id" in fields else None,
        )

    async def recover(self, now_us: int) -> int:
        """One pass of recovery: every bucket's reservations past their deadline are ended
        (credited and settled: a reservation made is never fenced off), then the
        expectations past theirs are aborted, each only once its request is known never to
        reserve (``_recover_expectation``). An entry that cannot be ended now (an outage of
        its buckets, or a fault that needs an operator) is put back later in its due set,
        so that it neither stops the pass nor keeps the entries behind it waiting. How many
        it ended."""
        ended = 0
        for bucket in keyspace.all_buckets():
            due_key = keyspace.outbound_due(bucket)
            for raw in await self._due(due_key, now_us):
                ended += await self._recover_entry(
                    due_key, raw, now_us, self._recover_reservation(bucket, raw)
                )
        for bucket in keyspace.all_buckets():
            due_key = keyspace.inbound_due(bucket)
            for raw in await self._due(due_key, now_us):
                ended += await self._recover_entry(
                    due_key, raw, now_us, self._recover_expectation(due_key, raw, now_us)
                )
        return ended

    async def _due(self, key: str, now_us: int) -> list[bytes]:
        """The first entries due; none while the bucket cannot be reached."""
        try:
            return cast(
                list[bytes],
                await self._redis.zrangebyscore(key, "-inf", now_us, start=0, num=RECOVERY_BATCH),
            )
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("recovery cannot read %s: %r", key, error)
            return []

    async def _recover_entry(
        self, due_key: str, raw: bytes, now_us: int, ending: Coroutine[Any, Any, bool]
    ) -> int:
        """Runs the ending of one due entry: 1 when it ended it. One that failed goes back
        in its due set, after RECOVERY_RETRY_S on an outage, RECOVERY_FAULT_RETRY_S (logged
        at CRITICAL) on anything else: money recovery must go on for every other entry."""
        try:
            return 1 if await ending else 0
        except Exception as error:
            if is_outage(error):
                log.warning("recovery could not end %s of %s: %r", raw, due_key, error)
                later_s = RECOVERY_RETRY_S
            else:
                log.critical(
                    "recovery cannot end %s of %s; an operator must (docs/scaling.md)",
                    raw,
                    due_key,
                    exc_info=error,
                )
                later_s = RECOVERY_FAULT_RETRY_S
        try:
            await self._redis.zadd(due_key, {raw: now_us + later_s * 1_000_000}, xx=True)
        except Exception as error:
            if not is_outage(error):
                raise
        return 0

    async def _recover_reservation(self, bucket: int, raw: bytes) -> bool:
        txn_id = int(raw)
        state = await self.complete(bucket, txn_id)
        if state == "gone":
            # Listed but without its record: nothing to end (a bug, or a key deleted by hand).
            log.error("transfer %d across buckets is due but has no reservation", txn_id)
            await self._redis.zrem(keyspace.outbound_due(bucket), raw)
            return False
        log.warning("recovery ended transfer %d across buckets: %s", txn_id, state)
        return True

    async def _recover_expectation(self, due_key: str, raw: bytes, now_us: int) -> bool:
        """Aborts an expectation past its deadline once the payer's bucket says its request
        did not reserve, and now never will (the lookup makes "not applied" final, on the
        replicas too): a reservation made is never fenced off, which keeps a batch all or
        nothing whatever the timing. One whose request did reserve waits another deadline:
        the reservation's recovery credits it."""
        to_user_id, _, token = raw.decode().partition(":")
        record = cast(
            list[bytes | None],
            await self._redis.hmget(
                keyspace.inbound(int(to_user_id), token), "from", "request", "hold"
            ),
        )
        payer, request, hold = record
        if payer is not None and request is not None:
            reply = await self._lookup(int(payer), request.decode())
            outcome = reply[0]
            if outcome == b"ok":
                later_us: int | None = now_us + EXPECTATION_DEADLINE_MS * 1000
                if hold == b"1":
                    later_us = await self._hold_still_open(int(payer), int(reply[1]), now_us)
                if later_us is not None:
                    await self._redis.zadd(due_key, {raw: later_us}, xx=True)
                    return False
            elif outcome != b"not_applied":  # not_rebuilt: the payer's bucket lost its data
                raise ConnectionError(f"the payer's bucket cannot tell ({outcome!r})")
        # No record, or one ended already: the abort writes the tombstone, or does nothing.
        await self.abort(int(to_user_id), token)
        return True

    async def _hold_still_open(self, payer: int, hold_id: int, now_us: int) -> int | None:
        """When the expectation of a hold made (``hold_id``, of ``payer``'s bucket) is due
        again: a pending hold's once it may have expired (the sweeper aborts it then), a
        captured one's once its reservation's recovery may have credited it; None when the
        hold was voided or expired, or is gone, so no capture can follow it (by the payer's
        bucket's own clock and status) and the expectation is aborted."""
        raw = cast(
            list[bytes | None],
            await self._redis.hmget(
                keyspace.hold(keyspace.bucket_of(payer), hold_id), "status", "expires_at_us"
            ),
        )
        status, expires_at_us = raw
        later_us = now_us + EXPECTATION_DEADLINE_MS * 1000
        if status == b"captured":
            return later_us
        if status == b"pending" and expires_at_us is not None:
            return max(later_us, int(expires_at_us) + EXPECTATION_DEADLINE_MS * 1000)
        return None

    @staticmethod
    def _older_than_its_records(reservation: Reservation) -> bool:
        age_s = time.time() - reservation.created_at_us / 1_000_000
        return age_s > ENDED_RETENTION_S / 2

    async def _apply_credit(self, reservation: Reservation) -> str:
        """Step 3: "applied", "aborted" (the fence was set first) or "gone" (no record)."""
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
                "" if reservation.refund_of is None else str(reservation.refund_of),
                "" if reservation.hold_id is None else str(reservation.hold_id),
            ],
            wait_for_replicas=True,
        )
        outcome = reply[0].decode()
        if outcome not in ("applied", "aborted", "gone"):
            raise ScriptArgumentRejected(f"transfer_credit: {outcome}")
        return outcome

    async def _end(
        self, script: LuaScript, state: str, reservation: Reservation, keys: list[str]
    ) -> str:
        reply: list[bytes] = await script(
            keys=keys,
            args=[str(reservation.txn_id), str(ENDED_RETENTION_S), str(ENDED_REQUEST_TTL_S)],
            wait_for_replicas=True,
        )
        ended = reply[0].decode()
        if ended != state:
            # The fence orders credit and abort: a reservation is never both settled and voided.
            raise CrossingInvariantBroken(f"{reservation} is {ended}, not {state}")
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
    def _request_key(reservation: Reservation) -> str:
        return keyspace.request_outcome(reservation.from_user_id, reservation.request)

    @staticmethod
    def _inbound_keys(to_user_id: int, token: str) -> list[str]:
        return [
            keyspace.user(to_user_id),
            keyspace.inbound(to_user_id, token),
            keyspace.inbound_due(keyspace.bucket_of(to_user_id)),
        ]
