"""The money scripts, bound to one Redis client: typed calls in, typed results out.

Balances are changed only inside the scripts: this module never reads a balance to write
it back. A script's refusal comes back as the catalog's ``Refused``
(service/domain/refusals.py), with ``replayed`` when it was recorded under the
Idempotency-Key by an earlier request.

A money request is never answered as refused or "retry later" when it may have been
applied. Each call carries a new random request token; a script that moves money records
its transaction under it (lua/includes/request_outcome.lua). When the reply is lost after
the command was sent (ReplyLost: a timeout, a dropped connection), the call asks Redis what
became of the request (lua/lookup_request.lua) until Redis answers, for at most
``request_outcome_wait_ms``: the transaction (answered as if the reply had come), or "not
applied, and now never will be" (REQUEST_NOT_APPLIED: a 503 with Retry-After, honest). If
Redis does not answer in time: OUTCOME_UNKNOWN (503, no Retry-After). A failure before the
command was sent (no connection) is raised as it is: an outage, nothing was done.

With WALLET_REDIS_MIN_REPLICAS, a money call is answered only once its writes are on the
replicas (service/redis/replicas.py): a call that moved money without their confirmation
in time is OUTCOME_UNKNOWN too; a refusal moved nothing and is answered as it is.
"""

import asyncio
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import cast

from service.domain import refusals
from service.domain.amounts import MAX_AMOUNT_KOPECKS
from service.domain.limits import MAX_USER_ID, USERNAME_PATTERN
from service.domain.refusals import BY_LUA_OUTCOME, Refused
from service.outages import is_outage
from service.redis import keyspace
from service.redis.crossing import (
    RESERVATION_DEADLINE_MS,
    CrossingLegs,
    Reservation,
)
from service.redis.pipelining import ReplyLost
from service.redis.replicas import ReplicasNotConfirmed
from service.redis.request_lookup import RequestLookup
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient
from service.settings import Settings

log = logging.getLogger("wallet.money")

# Bytes of randomness in a request token (22 URL-safe characters).
REQUEST_TOKEN_BYTES = 16
# Between two questions about a lost reply while Redis does not answer.
OUTCOME_LOOKUP_PAUSE_S = 0.1


@dataclass(frozen=True, slots=True)
class Accepted:
    txn_id: int
    created_at_us: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class WalletAmounts:
    """What GET /api/balance/ shows: the posted balance (held money included) and what the
    user's pending holds keep of it, expired holds not counted (lua/read_balance.lua)."""

    balance_kopecks: int
    held_kopecks: int

    @property
    def available_kopecks(self) -> int:
        return self.balance_kopecks - self.held_kopecks


@dataclass(frozen=True, slots=True)
class SessionCheck:
    """The session the script must find alive and owned by the acting user."""

    redis_key: str
    absolute_timeout_s: int
    idle_timeout_s: int

    def args(self) -> list[str]:
        return ["1", str(self.absolute_timeout_s), str(self.idle_timeout_s)]


# Internal callers (operations, tests) act with no session; the timeouts are then unused.
_NO_SESSION_ARGS = ["0", "1", "1"]


def check_amount(amount_kopecks: int) -> None:
    if type(amount_kopecks) is not int or not 1 <= amount_kopecks <= MAX_AMOUNT_KOPECKS:
        raise ValueError(f"amount_kopecks out of range: {amount_kopecks!r}")


def check_user_id(user_id: int) -> None:
    if type(user_id) is not int or not 1 <= user_id <= MAX_USER_ID:
        raise ValueError(f"bad user id: {user_id!r}")


def check_username(username: str) -> None:
    if type(username) is not str or re.fullmatch(USERNAME_PATTERN, username) is None:
        raise ValueError(f"bad username: {username!r}")


def _result(reply: list[bytes]) -> Accepted:
    outcome = reply[0].decode()
    replayed = reply[-1] == b"1"
    if outcome == "ok":
        return Accepted(txn_id=int(reply[1]), created_at_us=int(reply[2]), replayed=replayed)
    raise refused(outcome, replayed, wait_ms=reply[1])


def refused(
    outcome: str, replayed: bool, field: str | None = None, wait_ms: bytes = b""
) -> Refused:
    """The catalog's refusal for a script's outcome; a bug when the catalog has none.
    ``wait_ms``: the reply's second field, which says how long a payer refused for naming
    unknown recipients waits (lua/includes/recipient_misses.lua); its Retry-After."""
    refusal = BY_LUA_OUTCOME.get(outcome)
    if refusal is None:
        raise ScriptArgumentRejected(outcome)
    retry_after_s = None
    if refusal is refusals.TOO_MANY_UNKNOWN_RECIPIENTS:
        retry_after_s = math.ceil(int(wait_ms) / 1000)
    return Refused(refusal, field=field, replayed=replayed, retry_after_s=retry_after_s)


def new_request_token() -> str:
    return secrets.token_urlsafe(REQUEST_TOKEN_BYTES)


def head_keys(user_id: int, token: str) -> list[str]:
    """The keys every money script takes first (their headers: KEYS[1..4]); ``user_id``
    is the acting user, whose bucket the call runs in."""
    bucket = keyspace.bucket_of(user_id)
    return [
        keyspace.txn_seq(bucket),
        keyspace.txn_stream(bucket),
        keyspace.user(user_id),
        keyspace.request_outcome(user_id, token),
    ]


def tail_keys(user_id: int, idempotency_key: str | None, session: SessionCheck | None) -> list[str]:
    """The keys every money script takes last: the bucket's clock, then the
    Idempotency-Key's record and the session, each only when it is given."""
    keys = [keyspace.txn_clock(keyspace.bucket_of(user_id))]
    if idempotency_key is not None:
        keys.append(keyspace.idempotency(user_id, idempotency_key))
    if session is not None:
        keys.append(session.redis_key)
    return keys


def session_args(session: SessionCheck | None) -> list[str]:
    """The three ARGV of a money script about the session: check flag, absolute, idle."""
    return _NO_SESSION_ARGS if session is None else session.args()


class MoneyScriptRunner:
    """Runs a money script and, when its reply is lost, asks Redis what became of the
    request (the module's docstring). Shared by every module that calls money scripts."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self.idempotency_ttl_s = str(settings.idempotency_ttl_s)
        self.outcome_ttl_s = str(settings.request_outcome_ttl_s)
        # The two ARGV of the scripts of payments that name recipients about recipient
        # misses (lua/includes/recipient_misses.lua): the limit and the window in ms.
        self.recipient_misses_args = [
            str(settings.recipient_not_found_max_per_user),
            str(settings.recipient_not_found_window_s * 1000),
        ]
        self._outcome_wait_s = settings.request_outcome_wait_ms / 1000
        self._lookup_request = RequestLookup(redis)

    async def run(
        self, script: LuaScript, keys: list[str], args: list[str], user_id: int, token: str
    ) -> list[bytes]:
        """The script's reply; when it was lost, lookup_request.lua's instead: then
        ``{outcome, txn_id, created_at_us, "0"}`` whatever the script's own reply shape
        (outcome "ok" with the request's recorded transaction, or "not_applied"). Raises
        Refused(OUTCOME_UNKNOWN) when Redis does not tell in time, or when the replicas did
        not confirm a call that moved money."""
        try:
            reply: list[bytes] = await script(keys=keys, args=args, wait_for_replicas=True)
        except ReplyLost as lost:
            log.warning("the reply of a money request was lost (%s); asking Redis", lost)
            reply = await self._outcome_after_lost_reply(user_id, token)
        except ReplicasNotConfirmed as unconfirmed:
            reply = unconfirmed.reply
            if reply[0] == b"ok":  # it moved money, which a failover may take back
                log.warning("the outcome of a money request is unknown: %s", unconfirmed)
                raise Refused(refusals.OUTCOME_UNKNOWN) from None
        return reply

    async def _outcome_after_lost_reply(self, user_id: int, token: str) -> list[bytes]:
        """Asks Redis what became of the request, until it answers, for at most the
        outcome wait; raises Refused(OUTCOME_UNKNOWN) if it does not answer in time. The
        lookup is safe to repeat: its first answer is the one it records. A transaction it
        finds is answered only once the replicas have it (asked again until they do)."""
        try:
            async with asyncio.timeout(self._outcome_wait_s):
                while True:
                    try:
                        reply = await self._lookup_request(user_id, token)
                    except ReplicasNotConfirmed as unconfirmed:
                        # "not_applied" stays true wherever the replicas are: the request
                        # ran nowhere else.
                        if unconfirmed.reply[0] != b"ok":
                            return cast(list[bytes], unconfirmed.reply)
                    except Exception as error:
                        if not is_outage(error):
                            raise
                    else:
                        # Redis lost its data: what it knew of the request went with it.
                        if reply[0] != b"not_rebuilt":
                            return reply
                    await asyncio.sleep(OUTCOME_LOOKUP_PAUSE_S)
        except TimeoutError:
            log.warning("the outcome of a money request is unknown: Redis did not tell in time")
            raise Refused(refusals.OUTCOME_UNKNOWN) from None


class MoneyScripts:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._runner = MoneyScriptRunner(redis, settings)
        self._register_user = LuaScript(redis, "register_user")
        self._deposit = LuaScript(redis, "deposit")
        self._transfer = LuaScript(redis, "transfer")
        self._crossing = CrossingLegs(redis)
        self._read_balance = LuaScript(redis, "read_balance")

    async def register_user(self, user_id: int) -> bool:
        """Gives the user a zero balance unless they have one; True if it was created."""
        check_user_id(user_id)
        reply: list[bytes] = await self._register_user(
            keys=[keyspace.user(user_id)], args=[str(user_id)]
        )
        outcome = reply[0].decode()
        if outcome not in ("created", "exists"):
            raise ScriptArgumentRejected(outcome)
        return outcome == "created"

    async def deposit(
        self,
        user_id: int,
        amount_kopecks: int,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
    ) -> Accepted:
        check_user_id(user_id)
        check_amount(amount_kopecks)
        runner = self._runner
        token = new_request_token()
        keys = [*head_keys(user_id, token), *tail_keys(user_id, idempotency_key, session)]
        args = [str(user_id), str(amount_kopecks), idempotency_key or "", runner.idempotency_ttl_s]
        args += session_args(session)
        args += [token, runner.outcome_ttl_s]
        return _result(await runner.run(self._deposit, keys, args, user_id, token))

    async def transfer(
        self,
        from_user_id: int,
        to_user_id: int | None,
        amount_kopecks: int,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
        to_username: str | None = None,
    ) -> Accepted:
        """A transfer to ``to_user_id``; when the request named the recipient by
        ``to_username``, that name too, with ``to_user_id`` None if it resolved to no one.
        The script then refuses it (recipient_not_found) and records the refusal under the
        key, which a retry after the name is registered replays instead of paying."""
        check_user_id(from_user_id)
        if to_user_id is not None:
            check_user_id(to_user_id)
        if to_username is not None:
            check_username(to_username)
        elif to_user_id is None:
            raise ValueError("a transfer needs to_user_id or to_username")
        check_amount(amount_kopecks)
        runner = self._runner
        token = new_request_token()
        bucket = keyspace.bucket_of(from_user_id)
        keys = [
            *head_keys(from_user_id, token),
            keyspace.pending_holds(from_user_id),
            keyspace.recipient_misses_of_user(from_user_id),
        ]
        # Across buckets: the recipient's bucket answers first (service/redis/crossing.py).
        verdict = ""
        if to_user_id is not None and keyspace.bucket_of(to_user_id) != bucket:
            verdict = await self._crossing.expect(from_user_id, to_user_id, amount_kopecks, token)
            keys += [keyspace.transit(bucket), keyspace.outbound_due(bucket)]
        elif to_user_id is not None:
            keys.append(keyspace.user(to_user_id))
        keys += tail_keys(from_user_id, idempotency_key, session)
        args = [
            str(from_user_id),
            "" if to_user_id is None else str(to_user_id),
            str(amount_kopecks),
            idempotency_key or "",
            runner.idempotency_ttl_s,
        ]
        args += session_args(session)
        args += [to_username or "", token, runner.outcome_ttl_s, *runner.recipient_misses_args]
        args += [verdict, str(RESERVATION_DEADLINE_MS) if verdict else ""]
        # Refused(OUTCOME_UNKNOWN) leaves the expectation: the reservation may stand (its
        # replicas did not confirm it) and then needs it; recovery ends both.
        reply = await runner.run(self._transfer, keys, args, from_user_id, token)
        if not verdict:
            return _result(reply)
        # After the reservation of a transfer across buckets: its credit and settlement,
        # answered once both are done (CrossingLegs.conclude). A refusal leaves this
        # request's expectation unused: it is aborted (by recovery, should that fail).
        assert to_user_id is not None
        try:
            accepted = _result(reply)
        except Refused:
            if verdict == "expected":
                await self._crossing.drop_unused(to_user_id, token)
            raise
        made = Reservation.reserved(accepted.txn_id, accepted.created_at_us, from_user_id,
                                    to_user_id, amount_kopecks, token, idempotency_key)  # fmt: skip
        await self._crossing.conclude(made, accepted.replayed, verdict)
        return accepted

    async def balance(self, user_id: int) -> WalletAmounts:
        """The wallet's balance and held money now; Refused(ACCOUNT_NOT_FOUND) when it has
        no wallet (Redis lost its data and was not rebuilt yet)."""
        check_user_id(user_id)
        reply: list[bytes] = await self._read_balance(
            keys=[keyspace.user(user_id), keyspace.pending_holds(user_id)], args=[str(user_id)]
        )
        outcome = reply[0].decode()
        if outcome != "ok":
            raise refused(outcome, replayed=False)
        return WalletAmounts(balance_kopecks=int(reply[1]), held_kopecks=int(reply[2]))
