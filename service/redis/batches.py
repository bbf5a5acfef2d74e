"""Batch transfers (lua/transfer_batch.lua), bound to one Redis client: one payer, 1..100
legs, all or nothing. docs/holds.md gives the design.

A refused leg comes back as the catalog's ``Refused`` with the field of the leg at fault
(``transfers[<i>].amount``, ``transfers[<i>].to_user_id`` or ``transfers[<i>].to_username``,
``i`` from 0, as the request gave the legs), replayed refusals included: the script records
the leg's index with the refusal.

A leg to a user of another bucket (docs/scaling.md, "Across buckets") is a transfer across
buckets inside the batch: its recipient's bucket is asked first (an expectation; one
recipient's legs in order, up to its first refusal; the recipients at once), the batch's one
script then reserves it with the rest, all or nothing, and every such leg is credited and
settled before the 201. Recovery never fences off a reservation that was made
(service/redis/crossing.py), so once the script has run every leg completes.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from service.domain import refusals
from service.domain.limits import MAX_BATCH_LEGS
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.crossing import (
    RESERVATION_DEADLINE_MS,
    CrossingLegs,
    Reservation,
    leg_token,
)
from service.redis.money import (
    MoneyScriptRunner,
    SessionCheck,
    check_amount,
    check_user_id,
    check_username,
    head_keys,
    new_request_token,
    refused,
    session_args,
    tail_keys,
)
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings

log = logging.getLogger("wallet.money")

# Refusals that name a leg's recipient rather than its amount.
_RECIPIENT_OUTCOMES = frozenset({"recipient_not_found", "self_transfer"})
_LEG_OUTCOMES = _RECIPIENT_OUTCOMES | {"insufficient_funds", "balance_limit_exceeded"}


@dataclass(frozen=True, slots=True)
class Leg:
    to_user_id: int | None  # None: the leg named a username that resolved to no one
    amount_kopecks: int
    to_username: str | None = None  # the username as the request named it, if it did


@dataclass(frozen=True, slots=True)
class BatchAccepted:
    first_txn_id: int  # leg i has id first_txn_id + i
    created_at_us: int
    replayed: bool


def _check_legs(legs: Sequence[Leg]) -> None:
    if not 1 <= len(legs) <= MAX_BATCH_LEGS:
        raise ValueError(f"a batch has 1..{MAX_BATCH_LEGS} legs, not {len(legs)}")
    for leg in legs:
        if not isinstance(leg, Leg):
            raise ValueError(f"not a Leg: {leg!r}")
        if leg.to_user_id is not None:
            check_user_id(leg.to_user_id)
        if leg.to_username is not None:
            check_username(leg.to_username)
        elif leg.to_user_id is None:
            raise ValueError("a leg needs to_user_id or to_username")
        check_amount(leg.amount_kopecks)


def _field(leg_index: int, leg: Leg, outcome: str) -> str:
    if outcome in _RECIPIENT_OUTCOMES:
        name = "to_username" if leg.to_username is not None else "to_user_id"
    else:
        name = "amount"
    return f"transfers[{leg_index}].{name}"


def batch_result(reply: list[bytes], legs: Sequence[Leg]) -> BatchAccepted:
    """The script's reply ({outcome, txn_id, created_at_us, leg, replayed}), or a lost
    reply's lookup ({outcome, txn_id, created_at_us, "0"}: no leg, never replayed)."""
    outcome = reply[0].decode()
    replayed = len(reply) == 5 and reply[4] == b"1"
    if outcome == "ok":
        return BatchAccepted(
            first_txn_id=int(reply[1]), created_at_us=int(reply[2]), replayed=replayed
        )
    field = None
    leg_raw = reply[3] if len(reply) == 5 else b""
    if outcome in _LEG_OUTCOMES and leg_raw:
        index = int(leg_raw)
        field = _field(index, legs[index], outcome)
    raise refused(outcome, replayed, field, wait_ms=reply[1])


class BatchScripts:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._runner = MoneyScriptRunner(redis, settings)
        self._transfer_batch = LuaScript(redis, "transfer_batch")
        self._crossing = CrossingLegs(redis)

    async def transfer_batch(
        self,
        from_user_id: int,
        legs: Sequence[Leg],
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
    ) -> BatchAccepted:
        """Every leg or none. Raises ``Refused`` (with the leg's field where a leg is at
        fault); ValueError for arguments no request can produce (wrong leg count, ids,
        names or amounts out of range). Legs to users of other buckets: the module's
        docstring."""
        check_user_id(from_user_id)
        _check_legs(legs)
        runner = self._runner
        token = new_request_token()
        bucket = keyspace.bucket_of(from_user_id)
        across = [
            i
            for i, leg in enumerate(legs)
            if leg.to_user_id not in (None, from_user_id)
            and keyspace.bucket_of(leg.to_user_id) != bucket
        ]
        verdicts = await self._expect(from_user_id, legs, across, token)
        keys = [
            *head_keys(from_user_id, token),
            keyspace.pending_holds(from_user_id),
            keyspace.recipient_misses_of_user(from_user_id),
        ]
        seen: set[int] = set()
        for i, leg in enumerate(legs):
            to = leg.to_user_id
            if to is not None and to != from_user_id and to not in seen and i not in verdicts:
                seen.add(to)
                keys.append(keyspace.user(to))
        if across:
            keys += [keyspace.transit(bucket), keyspace.outbound_due(bucket)]
        keys += tail_keys(from_user_id, idempotency_key, session)
        args = [str(from_user_id), idempotency_key or "", runner.idempotency_ttl_s]
        args += session_args(session)
        args += [token, runner.outcome_ttl_s, *runner.recipient_misses_args, str(len(legs))]
        args.append(str(RESERVATION_DEADLINE_MS) if across else "")
        for i, leg in enumerate(legs):
            args += [
                "" if leg.to_user_id is None else str(leg.to_user_id),
                leg.to_username or "",
                str(leg.amount_kopecks),
                verdicts.get(i, ""),
            ]
        reply = await runner.run(self._transfer_batch, keys, args, from_user_id, token)
        try:
            accepted = batch_result(reply, legs)
        except Refused:
            await self._drop_unused(legs, verdicts, token)
            raise
        if across:
            await self._complete(from_user_id, legs, across, token, idempotency_key, accepted)
            if accepted.replayed:
                await self._drop_unused(legs, verdicts, token)
        return accepted

    async def _expect(
        self, from_user_id: int, legs: Sequence[Leg], across: list[int], token: str
    ) -> dict[int, str]:
        """The verdicts of the recipients' buckets on the legs across buckets. A recipient's
        legs are asked in order, up to the first refusal (the script refuses at it, or
        before: the rest stay "unasked"), since each keeps headroom the next is checked
        against; different recipients' at once, since one's headroom is no other's (the
        calls of one event-loop turn to one primary go in one batch)."""
        verdicts = dict.fromkeys(across, "unasked")
        by_recipient: dict[int, list[int]] = {}
        for i in across:
            to_user_id = legs[i].to_user_id
            assert to_user_id is not None
            by_recipient.setdefault(to_user_id, []).append(i)

        async def ask(to_user_id: int, indexes: list[int]) -> None:
            for i in indexes:
                verdicts[i] = await self._crossing.expect(
                    from_user_id, to_user_id, legs[i].amount_kopecks, leg_token(token, i), token
                )
                if verdicts[i] != "expected":
                    return

        asked = await asyncio.gather(
            *(ask(to, indexes) for to, indexes in by_recipient.items()), return_exceptions=True
        )
        for outcome in asked:
            if isinstance(outcome, BaseException):
                # No script runs under this token: the expectations made are given back
                # (by recovery, should that fail too).
                await self._drop_unused(legs, verdicts, token)
                raise outcome
        return verdicts

    async def _complete(
        self,
        from_user_id: int,
        legs: Sequence[Leg],
        across: list[int],
        token: str,
        idempotency_key: str | None,
        accepted: BatchAccepted,
    ) -> None:
        """Each leg across buckets credited and settled (CrossingLegs.drive), at once, before
        the batch is answered. A voided leg breaks all or nothing: only the loss of its
        credit's record can void a leg that was reserved (a failover without
        WALLET_REDIS_MIN_REPLICAS); logged for an operator and answered as an error."""
        made = []
        for i in across:
            to_user_id = legs[i].to_user_id
            assert to_user_id is not None
            leg = Reservation.reserved(accepted.first_txn_id + i, accepted.created_at_us,
                                       from_user_id, to_user_id, legs[i].amount_kopecks,
                                       leg_token(token, i), idempotency_key,
                                       request_token=token)  # fmt: skip
            made.append(leg)
        ends = await asyncio.gather(
            *(self._crossing.drive(m, accepted.replayed) for m in made), return_exceptions=True
        )
        for end in ends:
            if isinstance(end, BaseException):
                raise end
        if "voided" in ends:
            log.critical(
                "the batch from transaction %d has legs voided: %s; an operator must look",
                accepted.first_txn_id,
                [m.txn_id for m, end in zip(made, ends, strict=True) if end == "voided"],
            )
            raise Refused(refusals.INTERNAL_ERROR)

    async def _drop_unused(self, legs: Sequence[Leg], verdicts: dict[int, str], token: str) -> None:
        """Gives back the headroom this request's expectations kept (refused, a replay, or
        not sent), all at once."""
        unused = []
        for i, verdict in verdicts.items():
            to_user_id = legs[i].to_user_id
            if verdict == "expected" and to_user_id is not None:
                unused.append(self._crossing.drop_unused(to_user_id, leg_token(token, i)))
        await asyncio.gather(*unused)
