"""The hold scripts, bound to one Redis client: create, capture, void (money scripts, run
through MoneyScriptRunner with the lost-reply lookup) and the sweeper's expiry.
docs/holds.md gives the design; each script's header gives its keys and replies.

What each call answers when the script's reply was lost and lookup_request.lua found the
request's record (``{"ok", txn_id, created_at_us, "0"}``, service/redis/money.py):

- create: txn_id is the hold id and created_at_us the hold's; the hold is then built from
  them and the call's own arguments, exactly as the script made it (expires_at_us is
  created_at_us + expires_in_s * 10^6 by construction; the hold was pending right after).
- capture: txn_id and created_at_us are the capture's transaction; the payer and the hold's
  amount (captured when no amount was given) come from the read of ``hold:<id>`` made
  before the call (immutable fields).
- void: the hold as voided, from that same read.

So no call reads Redis again after a lost reply, and none guesses.

A hold whose payee is in another bucket (docs/scaling.md, "Holds across buckets") is made
after an expectation of its capture on the payee's bucket, for its whole life
(service/redis/crossing.py), and its payee acts on it through service/redis/holds_across.py:
the caller names the hold's bucket (``hold_bucket``: its id's, service/ledger/id_buckets.py).
The sweeper aborts the expectation of a hold it expired.

Capture and void first read ``from``/``to``/``amount``/``created_at_us``/``expires_at_us``
of ``hold:<id>`` (immutable) to name the payer's keys. When the hash is missing (it ended
long ago, or never was): without an Idempotency-Key, Refused(HOLD_NOT_FOUND) at once; with
one, the script is called with no payer, so that a retry still gets its recorded reply,
and otherwise answers hold_not_found, unrecorded (the HTTP layer then asks the ledger).
"""

from dataclasses import dataclass
from typing import cast

from service.domain import refusals
from service.domain.holds import Hold
from service.domain.limits import MAX_HOLD_EXPIRES_IN_S, MIN_HOLD_EXPIRES_IN_S
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.crossing import CrossingLegs
from service.redis.holds_across import HoldFacts, HoldsAcross
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
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient
from service.settings import Settings

US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class HoldAccepted:
    hold: Hold  # as it stands after the call
    replayed: bool


@dataclass(frozen=True, slots=True)
class CaptureAccepted:
    txn_id: int
    created_at_us: int
    hold_id: int
    from_user_id: int  # the payer
    to_user_id: int  # the payee (the caller)
    amount_kopecks: int  # captured
    replayed: bool


def check_expires_in_s(expires_in_s: int) -> None:
    if (
        type(expires_in_s) is not int
        or not MIN_HOLD_EXPIRES_IN_S <= expires_in_s <= MAX_HOLD_EXPIRES_IN_S
    ):
        raise ValueError(f"expires_in_s out of range: {expires_in_s!r}")


def check_hold_id(hold_id: int) -> None:
    # Hold ids are ids of txn:seq: the same 15 digits as user ids.
    check_user_id(hold_id)


def _replayed(reply: list[bytes]) -> bool:
    return reply[-1] == b"1"


class HoldScripts:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._redis = redis
        self._runner = MoneyScriptRunner(redis, settings)
        self._retention_s = str(settings.hold_retention_s)
        self._create = LuaScript(redis, "hold_create")
        self._capture = LuaScript(redis, "hold_capture")
        self._void = LuaScript(redis, "hold_void")
        self._expire = LuaScript(redis, "hold_expire")
        self._legs = CrossingLegs(redis)
        self._across = HoldsAcross(redis, settings)

    async def create(
        self,
        from_user_id: int,
        to_user_id: int | None,
        amount_kopecks: int,
        expires_in_s: int,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
        to_username: str | None = None,
    ) -> HoldAccepted:
        """A hold of the payer ``from_user_id`` for ``to_user_id``; with ``to_username``
        as for MoneyScripts.transfer (None id: the name resolved to no one)."""
        check_user_id(from_user_id)
        if to_user_id is not None:
            check_user_id(to_user_id)
        if to_username is not None:
            check_username(to_username)
        elif to_user_id is None:
            raise ValueError("a hold needs to_user_id or to_username")
        check_amount(amount_kopecks)
        check_expires_in_s(expires_in_s)
        runner = self._runner
        token = new_request_token()
        across = to_user_id is not None and not keyspace.same_bucket(from_user_id, to_user_id)
        verdict = ""
        if across:
            assert to_user_id is not None
            verdict = await self._legs.expect(
                from_user_id, to_user_id, amount_kopecks, token, hold_expires_in_s=expires_in_s
            )
        keys = [
            *head_keys(from_user_id, token),
            keyspace.pending_holds(from_user_id),
            keyspace.holds_due(keyspace.bucket_of(from_user_id)),
            keyspace.recipient_misses_of_user(from_user_id),
        ]
        if to_user_id is not None and not across:
            keys.append(keyspace.user(to_user_id))
        keys += tail_keys(from_user_id, idempotency_key, session)
        args = [
            str(from_user_id),
            "" if to_user_id is None else str(to_user_id),
            str(amount_kopecks),
            str(expires_in_s),
            idempotency_key or "",
            runner.idempotency_ttl_s,
        ]
        args += session_args(session)
        args += [to_username or "", token, runner.outcome_ttl_s, self._retention_s]
        args += [*runner.recipient_misses_args, verdict]
        reply = await runner.run(self._create, keys, args, from_user_id, token)
        outcome = reply[0].decode()
        if verdict == "expected" and (outcome != "ok" or _replayed(reply)):
            assert to_user_id is not None
            await self._legs.drop_unused(to_user_id, token)
        if outcome != "ok":
            raise refused(outcome, _replayed(reply), wait_ms=reply[1])
        # {ok, hold_id, created_at_us, expires_at_us, replayed}, or the lookup's
        # {ok, hold_id, created_at_us, "0"} after a lost reply (the module's docstring).
        # An "ok" always has a resolved payee: a name that resolved to no one is refused.
        assert to_user_id is not None
        created_at_us = int(reply[2])
        expires_at_us = created_at_us + expires_in_s * US_PER_S
        if len(reply) == 5 and int(reply[3]) != expires_at_us:
            raise ScriptArgumentRejected(f"hold_create answered expires_at_us {reply[3]!r}")
        hold = Hold(
            hold_id=int(reply[1]),
            from_user_id=from_user_id,
            to_user_id=to_user_id,
            amount_kopecks=amount_kopecks,
            status="pending",
            captured_amount_kopecks=0,
            created_at_us=created_at_us,
            expires_at_us=expires_at_us,
            capture_txn_id=None,
        )
        return HoldAccepted(hold=hold, replayed=_replayed(reply))

    async def capture(
        self,
        user_id: int,
        hold_id: int,
        amount_kopecks: int | None,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
        hold_bucket: int | None = None,
    ) -> CaptureAccepted:
        """The payee ``user_id`` captures ``amount_kopecks`` of the hold (None: all of it),
        which is in ``hold_bucket`` (None: the payee's own)."""
        check_user_id(user_id)
        check_hold_id(hold_id)
        if amount_kopecks is not None:
            check_amount(amount_kopecks)
        bucket = keyspace.bucket_of(user_id) if hold_bucket is None else hold_bucket
        facts = await self._facts(user_id, hold_id, idempotency_key, bucket)
        if bucket != keyspace.bucket_of(user_id):
            reply = await self._across.capture(
                user_id, hold_id, amount_kopecks, facts, idempotency_key, session
            )
        else:
            amount = "" if amount_kopecks is None else str(amount_kopecks)
            reply = await self._here(
                self._capture, user_id, hold_id, [amount], facts, idempotency_key, session
            )
        outcome = reply[0].decode()
        if outcome != "ok":
            field = "amount" if outcome == refusals.CAPTURE_EXCEEDS_HOLD.lua_outcome else None
            raise refused(outcome, _replayed(reply), field=field)
        if len(reply) == 6:  # {ok, txn_id, created_at_us, from, amount, replayed}
            from_user_id, captured = int(reply[3]), int(reply[4])
        else:  # the lookup's {ok, txn_id, created_at_us, "0"}: the script ran with facts
            assert facts is not None
            from_user_id = facts.from_user_id
            captured = facts.amount_kopecks if amount_kopecks is None else amount_kopecks
        return CaptureAccepted(
            txn_id=int(reply[1]),
            created_at_us=int(reply[2]),
            hold_id=hold_id,
            from_user_id=from_user_id,
            to_user_id=user_id,
            amount_kopecks=captured,
            replayed=_replayed(reply),
        )

    async def _here(
        self,
        script: LuaScript,
        user_id: int,
        hold_id: int,
        own_args: list[str],
        facts: HoldFacts | None,
        idempotency_key: str | None,
        session: SessionCheck | None,
    ) -> list[bytes]:
        """The reply of lua/hold_capture.lua or lua/hold_void.lua (``own_args``: a capture's
        amount, none for a void): the hold is in the payee's bucket."""
        runner = self._runner
        token = new_request_token()
        keys, payer = self._action_keys(user_id, hold_id, facts, token)
        keys += tail_keys(user_id, idempotency_key, session)
        args = [str(user_id), payer, str(hold_id), *own_args, idempotency_key or ""]
        args += [runner.idempotency_ttl_s, *session_args(session)]
        args += [token, runner.outcome_ttl_s, self._retention_s]
        return await runner.run(script, keys, args, user_id, token)

    async def void(
        self,
        user_id: int,
        hold_id: int,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
        hold_bucket: int | None = None,
    ) -> HoldAccepted:
        """The payee ``user_id`` lets the hold go (in ``hold_bucket``, as for capture); the
        hold as voided."""
        check_user_id(user_id)
        check_hold_id(hold_id)
        bucket = keyspace.bucket_of(user_id) if hold_bucket is None else hold_bucket
        facts = await self._facts(user_id, hold_id, idempotency_key, bucket)
        if bucket != keyspace.bucket_of(user_id):
            reply = await self._across.void(user_id, hold_id, facts, idempotency_key, session)
        else:
            reply = await self._here(
                self._void, user_id, hold_id, [], facts, idempotency_key, session
            )
        outcome = reply[0].decode()
        if outcome != "ok":
            raise refused(outcome, _replayed(reply))
        if len(reply) == 6:  # {ok, from, amount, created_at_us, expires_at_us, replayed}
            facts = HoldFacts(
                from_user_id=int(reply[1]),
                to_user_id=user_id,
                amount_kopecks=int(reply[2]),
                created_at_us=int(reply[3]),
                expires_at_us=int(reply[4]),
                token=None,
            )
        # Else the lookup's {ok, hold_id, voided_at_us, "0"}: the script ran with facts.
        assert facts is not None
        hold = Hold(
            hold_id=hold_id,
            from_user_id=facts.from_user_id,
            to_user_id=user_id,
            amount_kopecks=facts.amount_kopecks,
            status="voided",
            captured_amount_kopecks=0,
            created_at_us=facts.created_at_us,
            expires_at_us=facts.expires_at_us,
            capture_txn_id=None,
        )
        return HoldAccepted(hold=hold, replayed=_replayed(reply))

    async def sweep(self, bucket: int, limit: int) -> int:
        """Marks up to ``limit`` of the bucket's holds due now as expired
        (lua/hold_expire.lua); the number marked this pass."""
        if type(limit) is not int or limit < 1:
            raise ValueError(f"bad sweep limit: {limit!r}")
        seconds, micros = await self._redis.time()
        now_us = seconds * US_PER_S + micros
        members = cast(
            list[bytes],
            await self._redis.zrangebyscore(keyspace.holds_due(bucket), "-inf", now_us, 0, limit),
        )
        if not members:
            return 0
        calls, payees = [], []
        for raw in members:
            member = raw.decode()
            hold_id, from_id, to_id, _ = (int(part) for part in member.split(":"))
            keys = [
                keyspace.hold(bucket, hold_id),
                keyspace.user(from_id),
                keyspace.pending_holds(from_id),
                keyspace.holds_due(bucket),
                keyspace.txn_stream(bucket),
            ]
            across = not keyspace.same_bucket(from_id, to_id)
            if not across:
                keys.append(keyspace.user(to_id))
            calls.append((keys, [member, "1" if across else "0"]))
            payees.append(to_id)
        replies = cast(list[list[bytes]], await self._expire.call_many(calls))
        marked = 0
        for to_id, reply in zip(payees, replies, strict=True):
            outcome = reply[0].decode()
            if outcome == "expired":
                marked += 1
                if reply[1]:
                    # The payee's side in its own bucket; on an outage recovery aborts it,
                    # by the hold's status, once its deadline is past.
                    await self._legs.drop_unused(to_id, reply[1].decode())
            elif outcome not in ("not_due", "gone", "not_pending"):
                raise ScriptArgumentRejected(outcome)
        return marked

    async def _facts(
        self, user_id: int, hold_id: int, idempotency_key: str | None, bucket: int
    ) -> HoldFacts | None:
        """The immutable fields of a hold of ``bucket`` the payee ``user_id`` acts on; None
        when the hold is missing and a key was given (the script then looks for a replay);
        else Refused(HOLD_NOT_FOUND)."""
        raw = cast(
            list[bytes | None],
            await self._redis.hmget(
                keyspace.hold(bucket, hold_id),
                ["from", "to", "amount", "created_at_us", "expires_at_us", "token"],
            ),
        )
        *numbers, token = raw
        if any(value is None for value in numbers):
            if idempotency_key is None:
                raise Refused(refusals.HOLD_NOT_FOUND)
            return None
        from_id, to_id, amount, created_at_us, expires_at_us = (
            int(cast(bytes, v)) for v in numbers
        )
        return HoldFacts(
            from_user_id=from_id,
            to_user_id=to_id,
            amount_kopecks=amount,
            created_at_us=created_at_us,
            expires_at_us=expires_at_us,
            token=None if token is None else token.decode(),
        )

    @staticmethod
    def _action_keys(
        user_id: int, hold_id: int, facts: HoldFacts | None, token: str
    ) -> tuple[list[str], str]:
        """The keys of hold_capture.lua / hold_void.lua before the tail, and the payer
        argument ("" when the hold is unknown)."""
        bucket = keyspace.bucket_of(user_id)
        keys = [
            *head_keys(user_id, token),
            keyspace.hold(bucket, hold_id),
            keyspace.holds_due(bucket),
        ]
        if facts is None:
            return keys, ""
        keys += [keyspace.user(facts.from_user_id), keyspace.pending_holds(facts.from_user_id)]
        return keys, str(facts.from_user_id)
