"""Refunds (lua/refund.lua), bound to one Redis client: the recipient of a transfer sends
all or part of it back to its payer. docs/holds.md gives the design.

The transfer's facts (kind, payer, payee, amount) never change: the caller reads them from
the ledger merged with the unpersisted stream tail and passes them; the refunded total is
kept in Redis (``refunded:{<payee>}:<txn_id>``) and only the script changes it.

A refund of "all that is left" learns its amount only inside the script. When the reply is
lost and the lookup (lua/lookup_request.lua) finds the refund, it answers outcome, txn_id
and created_at_us only; the script also keeps the amount under the request's token, in an
extra field ``amount`` of ``req:{<user_id>}:<token>``, which is read here then.
"""

import logging
from dataclasses import dataclass

from service.domain import refusals
from service.domain.limits import MAX_USER_ID
from service.domain.refusals import Refused
from service.domain.transactions import Transaction
from service.outages import is_outage
from service.redis import keyspace
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


@dataclass(frozen=True, slots=True)
class RefundAccepted:
    txn_id: int
    created_at_us: int
    amount_kopecks: int  # refunded by this call
    to_user_id: int  # the original payer, credited
    replayed: bool


def refundable_by(transfer: Transaction | None, user_id: int) -> Transaction | None:
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

    async def refund(
        self,
        user_id: int,
        txn_id: int,
        transfer: Transaction | None,
        amount_kopecks: int | None,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
    ) -> RefundAccepted:
        """Refunds ``amount_kopecks`` of transfer ``txn_id`` (None: all that is left) to its
        payer. ``transfer``: transaction ``txn_id`` as the caller read it (None when there
        is none); anything but a transfer received by ``user_id`` is refused as
        transaction_not_found, recorded under the key. Raises ``Refused``; ValueError for
        arguments no request can produce."""
        check_user_id(user_id)
        if type(txn_id) is not int or not 1 <= txn_id <= MAX_USER_ID:
            raise ValueError(f"bad transaction id: {txn_id!r}")
        if transfer is not None and transfer.txn_id != txn_id:
            raise ValueError(f"transaction {transfer.txn_id} passed for {txn_id}")
        if amount_kopecks is not None:
            check_amount(amount_kopecks)
        found = refundable_by(transfer, user_id)
        runner = self._runner
        token = new_request_token()
        keys = [*head_keys(user_id, token), keyspace.pending_holds(user_id)]
        if found is not None:
            assert found.from_user_id is not None
            keys.append(keyspace.user(found.from_user_id))
        keys.append(keyspace.refunded(user_id, txn_id))
        keys += tail_keys(user_id, idempotency_key, session)
        args = [
            str(user_id),
            str(txn_id),
            "" if found is None else str(found.from_user_id),
            "" if found is None else str(found.amount_kopecks),
            "" if amount_kopecks is None else str(amount_kopecks),
            idempotency_key or "",
            runner.idempotency_ttl_s,
        ]
        args += session_args(session)
        args += [token, runner.outcome_ttl_s]
        reply = await runner.run(self._refund, keys, args, user_id, token)
        outcome = reply[0].decode()
        if outcome != "ok":
            raise refused(outcome, len(reply) == 5 and reply[4] == b"1")
        if found is None or found.from_user_id is None:
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
        return RefundAccepted(
            txn_id=int(reply[1]),
            created_at_us=int(reply[2]),
            amount_kopecks=amount,
            to_user_id=found.from_user_id,
            replayed=replayed,
        )

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
