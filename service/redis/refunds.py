"""Refunds (lua/refund.lua), bound to one Redis client: the recipient of a transfer sends
all or part of it back to its payer. docs/holds.md gives the design.

The transfer's facts (kind, payer, payee, amount) never change: the caller reads them from
the ledger merged with the unpersisted stream tail and passes them; the refunded total is
kept in Redis (``refunded:{<payee>}:<txn_id>``) and only the script changes it.

A refund of "all that is left" learns its amount only inside the script. When the reply is
lost and the lookup (lua/lookup_request.lua) finds the refund, it answers outcome, txn_id
and created_at_us only; the script also keeps the amount under the request's token, in an
extra field ``amount`` of ``req:{<user_id>}:<token>``, which is read here then.

A refund of a transfer that crossed buckets crosses back (docs/scaling.md, "Across
buckets"): the refunder's bucket reserves (lua/refund.lua), the payer's is credited, with
the saga of a transfer (service/redis/crossing.py) and the refunder's bucket as the payer's.
The expectation on the payer's bucket comes first and needs an amount: the one asked, or,
for all that is left, what is left as read just before. Should another refund change it in
between, the script refunds less than expected where the verdict covers it (the credit then
gives the rest of the headroom back), and otherwise answers "stale" (more is left, after a
void; or less, with the ceiling refused for more): the refund expects again.
"""

import logging
from dataclasses import dataclass
from typing import cast

from service.domain import refusals
from service.domain.limits import MAX_USER_ID
from service.domain.postings import FoundTransaction
from service.domain.refusals import Refused
from service.outages import is_outage
from service.redis import keyspace
from service.redis.crossing import (
    RESERVATION_DEADLINE_MS,
    CrossingLegs,
    Reservation,
)
from service.redis.money import (
    MoneyScriptRunner,
    SessionCheck,
    check_amount,
    check_user_id,
    head_keys,
    new_request_token,
    refused,
    session_args,
    tail_keys,
)
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient
from service.settings import Settings

log = logging.getLogger("wallet.money")

# How often a refund of all that is left across buckets expects again when the script found
# what is left not covered by what it expected (more, after a void; or less, with the payer's
# ceiling refused for more: both rare), before it answers "try again".
STALE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RefundAccepted:
    txn_id: int
    created_at_us: int
    amount_kopecks: int  # refunded by this call
    to_user_id: int  # the original payer, credited
    replayed: bool


def refundable_by(transfer: FoundTransaction | None, user_id: int) -> FoundTransaction | None:
    """The transfer when ``user_id`` may refund it (a transfer, a capture included,
    received by them), else None: the script then answers transaction_not_found."""
    if (
        transfer is None
        or transfer.kind != "transfer"
        or transfer.to_user_id != user_id
        or transfer.from_user_id is None
        or transfer.from_user_id == user_id
    ):
        return None
    return transfer


class RefundScripts:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._redis = redis
        self._runner = MoneyScriptRunner(redis, settings)
        self._refund = LuaScript(redis, "refund")
        self._crossing = CrossingLegs(redis)

    async def refund(
        self,
        user_id: int,
        txn_id: int,
        transfer: FoundTransaction | None,
        amount_kopecks: int | None,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
    ) -> RefundAccepted:
        """Refunds ``amount_kopecks`` of transfer ``txn_id`` (None: all that is left) to its
        payer. ``transfer``: transaction ``txn_id`` as the caller read it (None when there
        is none); anything but a transfer received by ``user_id`` is refused as
        transaction_not_found, recorded under the key. A transfer that crossed buckets is
        refunded across them too (the module's docstring). Raises ``Refused``; ValueError
        for arguments no request can produce."""
        check_user_id(user_id)
        if type(txn_id) is not int or not 1 <= txn_id <= MAX_USER_ID:
            raise ValueError(f"bad transaction id: {txn_id!r}")
        if transfer is not None and transfer.txn_id != txn_id:
            raise ValueError(f"transaction {transfer.txn_id} passed for {txn_id}")
        if amount_kopecks is not None:
            check_amount(amount_kopecks)
        found = refundable_by(transfer, user_id)
        payer_id = None if found is None else found.from_user_id
        crossing = payer_id is not None and (
            keyspace.bucket_of(payer_id) != keyspace.bucket_of(user_id)
        )
        for _ in range(STALE_ATTEMPTS):
            token = new_request_token()
            verdict = expected = ""
            if crossing:
                assert found is not None
                assert payer_id is not None
                expected = str(amount_kopecks or await self._left_as_read(user_id, found))
                verdict = await self._crossing.expect(user_id, payer_id, int(expected), token)
            call = _RefundCall(user_id, txn_id, found, amount_kopecks, token, verdict, expected)
            keys = call.keys(idempotency_key, session)
            args = call.args(self._runner, idempotency_key, session)
            # Refused(OUTCOME_UNKNOWN) leaves the expectation: the reservation may stand.
            reply = await self._runner.run(self._refund, keys, args, user_id, token)
            if reply[0] != b"stale":
                break
            # All that is left is not what was expected (a refund voided or made meanwhile).
            assert payer_id is not None
            if verdict == "expected":
                await self._crossing.drop_unused(payer_id, token)
        else:
            raise Refused(refusals.REFUND_CONTENDED)
        outcome = reply[0].decode()
        if outcome != "ok":
            if verdict == "expected":
                assert payer_id is not None
                await self._crossing.drop_unused(payer_id, token)
            raise refused(outcome, len(reply) == 5 and reply[4] == b"1")
        if found is None or payer_id is None:
            raise ScriptArgumentRejected(f"a refund of no transfer answered {outcome}")
        if len(reply) == 5:
            amount, replayed = int(reply[3]), reply[4] == b"1"
        else:
            # A lost reply's lookup found the refund: {outcome, txn_id, created_at_us, "0"}.
            replayed = False
            if amount_kopecks is not None:
                amount = amount_kopecks
            else:
                amount = await self._amount_under_token(user_id, token)
        accepted = RefundAccepted(
            txn_id=int(reply[1]),
            created_at_us=int(reply[2]),
            amount_kopecks=amount,
            to_user_id=payer_id,
            replayed=replayed,
        )
        if crossing:
            made = Reservation.reserved(accepted.txn_id, accepted.created_at_us, user_id,
                                        payer_id, amount, token, idempotency_key,
                                        txn_id)  # fmt: skip
            await self._crossing.conclude(made, replayed, verdict)
        return accepted

    async def _left_as_read(self, user_id: int, transfer: FoundTransaction) -> int:
        """What is left to refund of ``transfer`` as read now: the amount a refund of all
        that is left expects on the payer's bucket. None left: the transfer's amount (the
        script answers refund_exceeds_transfer, or refunds what a void gave back)."""
        raw = await self._redis.get(keyspace.refunded(user_id, transfer.txn_id))
        left = transfer.amount_kopecks - int(cast(bytes | None, raw) or 0)
        return left if left >= 1 else transfer.amount_kopecks

    async def _amount_under_token(self, user_id: int, token: str) -> int:
        """The amount refund.lua kept under the request's token, for a refund whose reply
        was lost. The money moved: if it cannot be read, the answer is outcome_unknown (a
        retry with the Idempotency-Key replays the refund)."""
        try:
            raw = await self._redis.hget(keyspace.request_outcome(user_id, token), "amount")
        except Exception as error:
            if not is_outage(error):
                raise
            raw = None
        if not raw:
            log.warning("a refund was applied but its amount could not be read back")
            raise Refused(refusals.OUTCOME_UNKNOWN)
        return int(raw)


@dataclass(frozen=True, slots=True)
class _RefundCall:
    """The KEYS and ARGV of one call of lua/refund.lua (its header)."""

    user_id: int
    txn_id: int
    found: FoundTransaction | None
    amount_kopecks: int | None
    token: str
    verdict: str  # across buckets: what the payer's bucket answered; "" within one
    expected: str  # across buckets: the amount the expectation kept; "" within one

    def keys(self, idempotency_key: str | None, session: SessionCheck | None) -> list[str]:
        user_id, bucket = self.user_id, keyspace.bucket_of(self.user_id)
        keys = [*head_keys(user_id, self.token), keyspace.pending_holds(user_id)]
        if self.verdict:
            keys += [keyspace.transit(bucket), keyspace.outbound_due(bucket)]
        elif self.found is not None:
            assert self.found.from_user_id is not None
            keys.append(keyspace.user(self.found.from_user_id))
        keys.append(keyspace.refunded(user_id, self.txn_id))
        return keys + tail_keys(user_id, idempotency_key, session)

    def args(
        self,
        runner: MoneyScriptRunner,
        idempotency_key: str | None,
        session: SessionCheck | None,
    ) -> list[str]:
        found = self.found
        args = [
            str(self.user_id),
            str(self.txn_id),
            "" if found is None else str(found.from_user_id),
            "" if found is None else str(found.amount_kopecks),
            "" if self.amount_kopecks is None else str(self.amount_kopecks),
            idempotency_key or "",
            runner.idempotency_ttl_s,
        ]
        args += session_args(session)
        deadline_ms = str(RESERVATION_DEADLINE_MS) if self.verdict else ""
        return [*args, self.token, runner.outcome_ttl_s, self.verdict, self.expected, deadline_ms]
