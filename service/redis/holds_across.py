"""A payee's capture or void of a hold in another bucket (docs/scaling.md, "Holds across
buckets"). The hold and its money are in the payer's bucket p; the payee's session and
Idempotency-Key in the payee's bucket q; no script touches both. So:

1. on q, lua/claim_key.lua checks the session and claims the key for this request's token
   (lua/includes/claim.lua), or answers the key's recorded reply;
2. on p, lua/hold_capture_across.lua (or lua/hold_void_across.lua) acts on the hold under
   that token and records the outcome there, refusals included;
3. a capture's reservation is credited on q, at most the hold's amount, against the
   expectation lua/hold_create.lua was made after, and settled (service/redis/crossing.py);
   a void aborts the expectation instead;
4. on q, lua/complete_claim.lua records the reply under the key (or releases the claim for
   a reply that is not recorded, as in one bucket).

A request that died between steps leaves the claim pending. A retry of the same body finds
it and asks p what became of the claim's token (lua/lookup_request.lua, which makes "not
applied" final): applied, or refused, the retry finishes steps 3 and 4 for it and answers
its reply as a replay; not applied, it takes the claim over under its own token and acts. A
request fenced off that way by a retry sent while it was still on its way finds "not
applied" on p and answers 503 (REQUEST_NOT_APPLIED), changing nothing. The expectation of a
hold whose request died after a void is aborted by recovery by the hold's status.
"""

from dataclasses import dataclass

from service.domain import refusals
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.crossing import RESERVATION_DEADLINE_MS, CrossingLegs, Reservation
from service.redis.money import (
    MoneyScriptRunner,
    SessionCheck,
    new_request_token,
    refused,
    session_args,
)
from service.redis.request_lookup import RequestLookup
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient
from service.settings import Settings

# How many times a request looks at a claim another request holds before it answers 503: a
# retry takes over a claim whose request never applied, and another retry may take it
# over first.
CLAIM_ATTEMPTS = 3
# The refusals the scripts on p record under the token, and so the claim under the key.
_RECORDED = frozenset({"hold_not_found", "hold_not_pending"})


@dataclass(frozen=True, slots=True)
class HoldFacts:
    """The immutable fields of ``hold:<id>``, read before a capture or void."""

    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    created_at_us: int
    expires_at_us: int
    # The token of a hold across buckets: its expectation's on the payee's bucket.
    token: str | None


@dataclass(frozen=True, slots=True)
class _Action:
    """One request of the payee on a hold of another bucket."""

    name: str  # "capture" or "void"
    user_id: int  # the payee
    hold_id: int
    amount_kopecks: int | None  # a capture's; None: all of it (and for a void)
    idempotency_key: str | None
    session: SessionCheck | None


class HoldsAcross:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._runner = MoneyScriptRunner(redis, settings)
        self._legs = CrossingLegs(redis)
        self._lookup = RequestLookup(redis)
        self._retention_s = str(settings.hold_retention_s)
        self._claim = LuaScript(redis, "claim_key")
        self._complete = LuaScript(redis, "complete_claim")
        self._capture = LuaScript(redis, "hold_capture_across")
        self._void = LuaScript(redis, "hold_void_across")

    async def capture(
        self,
        user_id: int,
        hold_id: int,
        amount_kopecks: int | None,
        facts: HoldFacts | None,
        idempotency_key: str | None,
        session: SessionCheck | None,
    ) -> list[bytes]:
        """The reply lua/hold_capture.lua would give: ``{ok, txn_id, created_at_us, from,
        amount, replayed}``, or a refusal's (HoldScripts raises it). ``facts``: the hold as
        read in its bucket, None when it is not there. Raises Refused for what only a saga
        answers (a claim taken over, a pending claim that cannot be settled now, a capture
        undone)."""
        action = _Action("capture", user_id, hold_id, amount_kopecks, idempotency_key, session)
        return await self._act(action, facts)

    async def void(
        self,
        user_id: int,
        hold_id: int,
        facts: HoldFacts | None,
        idempotency_key: str | None,
        session: SessionCheck | None,
    ) -> list[bytes]:
        """The reply lua/hold_void.lua would give: ``{ok, from, amount, created_at_us,
        expires_at_us, replayed}``, or a refusal's; raises as ``capture``."""
        action = _Action("void", user_id, hold_id, None, idempotency_key, session)
        return await self._act(action, facts)

    async def _act(self, action: _Action, facts: HoldFacts | None) -> list[bytes]:
        token = new_request_token()
        taken_over = ""
        for _ in range(CLAIM_ATTEMPTS):
            claim = await self._claim_key(action, token, taken_over)
            outcome = claim[0].decode()
            if outcome == "claimed":
                return await self._apply(action, facts, token)
            if outcome != "pending":
                # The key's completed record (replayed), or a refusal of the claim itself:
                # the reply of one bucket's script, which HoldScripts answers alike.
                return claim
            earlier = claim[1].decode()
            if facts is None:
                # The hold's hash is gone, and with it the payer to ask: nothing is known.
                raise Refused(refusals.OUTCOME_UNKNOWN)
            lookup = await self._lookup(facts.from_user_id, earlier)
            found = lookup[0].decode()
            if found == "not_applied":
                taken_over = earlier
                continue
            if found != "ok" and found not in _RECORDED:
                # not_rebuilt: the payer's bucket lost its data; the claim stays.
                raise refused(found, replayed=False)
            return await self._conclude(action, facts, earlier, lookup, replayed=True)
        raise Refused(refusals.SERVICE_UNAVAILABLE)

    async def _apply(self, action: _Action, facts: HoldFacts | None, token: str) -> list[bytes]:
        """Steps 2 to 4 under this request's claim."""
        if facts is None:
            # Not in Redis: the ledger is asked (the claim released, as in one bucket).
            await self._finish_claim(action, token, None)
            raise Refused(refusals.HOLD_NOT_FOUND)
        if facts.token is None:
            # A hold within its payer's bucket, so not this payee's (of another bucket):
            # recorded under the key, as lua/hold_capture.lua records another user's hold.
            await self._finish_claim(action, token, ["hold_not_found", "", "", "", ""])
            raise Refused(refusals.HOLD_NOT_FOUND)
        payer, bucket = facts.from_user_id, keyspace.bucket_of(facts.from_user_id)
        keys = [
            keyspace.txn_seq(bucket),
            keyspace.txn_stream(bucket),
            keyspace.user(payer),
            keyspace.request_outcome(payer, token),
            keyspace.hold(bucket, action.hold_id),
            keyspace.holds_due(bucket),
            keyspace.pending_holds(payer),
        ]
        args = [str(payer), str(action.user_id), str(action.hold_id)]
        if action.name == "capture":
            keys += [keyspace.transit(bucket), keyspace.outbound_due(bucket)]
            amount = "" if action.amount_kopecks is None else str(action.amount_kopecks)
            args += [amount, token, self._runner.outcome_ttl_s, str(RESERVATION_DEADLINE_MS)]
            script = self._capture
        else:
            args += [token, self._runner.outcome_ttl_s, self._retention_s]
            script = self._void
        args.append(action.idempotency_key or "")
        keys.append(keyspace.txn_clock(bucket))
        reply = await self._runner.run(script, keys, args, payer, token)
        return await self._conclude(action, facts, token, reply, replayed=False)

    async def _conclude(
        self,
        action: _Action,
        facts: HoldFacts,
        token: str,
        reply: list[bytes],
        replayed: bool,
    ) -> list[bytes]:
        """Steps 3 and 4 after the script on p answered ``reply`` under ``token`` (or the
        lookup of the token answered it: ``{outcome, txn_id, created_at_us, "0"}``)."""
        outcome = reply[0].decode()
        if outcome == "not_applied":
            raise refused(outcome, replayed=False)  # another request took the claim over
        if outcome in _RECORDED:
            await self._finish_claim(action, token, [outcome, "", "", "", ""])
            raise refused(outcome, replayed)
        if outcome == "not_rebuilt":
            # The payer's bucket lost its data: what became of the request is not known
            # there, so the claim stays, for a retry once it is rebuilt.
            raise refused(outcome, replayed=False)
        if outcome != "ok":
            # Not recorded (a validation refusal, a hold missing from Redis): the claim is
            # released, and the refusal answered as one bucket's script answers it (a hold
            # missing as hold_not_found, which the API looks for in the ledger).
            await self._finish_claim(action, token, None)
            answered = b"hold_not_found" if outcome == "hold_missing" else reply[0]
            return [answered, b"", b"", b"", b"", b"0"]
        assert facts.token is not None
        payer = str(facts.from_user_id)
        if action.name == "capture":
            done = [outcome, reply[1].decode(), reply[2].decode(), payer]
            done.append(await self._credit(action, facts, token, reply))
        else:
            await self._legs.drop_unused(action.user_id, facts.token)
            done = [outcome, payer, str(facts.amount_kopecks)]
            done += [str(facts.created_at_us), str(facts.expires_at_us)]
        await self._finish_claim(action, token, done)
        return [part.encode() for part in done] + [b"1" if replayed else b"0"]

    async def _credit(
        self, action: _Action, facts: HoldFacts, token: str, reply: list[bytes]
    ) -> str:
        """Step 3 of a capture: its reservation credited and settled; the amount captured.
        Raises TRANSFER_UNDONE (the claim released) when it was voided instead: its
        credit's record was lost with a failover."""
        txn_id = int(reply[1])
        if len(reply) == 6:  # the script's own reply: the reservation as it made it
            reservation: Reservation | None = Reservation.reserved(
                txn_id=txn_id,
                created_at_us=int(reply[2]),
                from_user_id=facts.from_user_id,
                to_user_id=action.user_id,
                amount_kopecks=int(reply[4]),
                token=facts.token or "",
                idempotency_key=None,
                request_token=token,
                hold_id=action.hold_id,
            )
        else:  # a lookup's, which names only the transaction: its record tells the rest
            bucket = keyspace.bucket_of(facts.from_user_id)
            reservation = await self._legs.reservation(bucket, txn_id)
        if reservation is None:
            raise Refused(refusals.OUTCOME_UNKNOWN)  # ended longer ago than it is kept
        # (Its request is this one's, unless `wallet rebuild` put it back under its own.)
        if reservation.hold_id != action.hold_id:
            raise ScriptArgumentRejected(f"{reservation} is not the capture of {action}")
        if await self._legs.drive(reservation, replayed=False) == "voided":
            await self._finish_claim(action, token, None)
            raise Refused(refusals.TRANSFER_UNDONE)
        return str(reservation.amount_kopecks)

    async def _claim_key(self, action: _Action, token: str, taken_over: str) -> list[bytes]:
        user_id, key, session = action.user_id, action.idempotency_key, action.session
        keys = [keyspace.txn_seq(keyspace.bucket_of(user_id)), keyspace.user(user_id)]
        if key is not None:
            keys.append(keyspace.idempotency(user_id, key))
        if session is not None:
            keys.append(session.redis_key)
        args = [str(user_id), key or "", self._runner.idempotency_ttl_s, *session_args(session)]
        amount = "" if action.amount_kopecks is None else str(action.amount_kopecks)
        args += [action.name, str(action.hold_id), amount, token, taken_over]
        reply: list[bytes] = await self._claim(keys=keys, args=args, wait_for_replicas=True)
        return reply

    async def _finish_claim(self, action: _Action, token: str, done: list[str] | None) -> None:
        """Step 4: the claim completed with ``done`` (outcome and reply fields), or released
        (None). Nothing to do without a key."""
        key = action.idempotency_key
        if key is None:
            return
        outcome_and_fields = done or ["", "", "", "", ""]
        reply: list[bytes] = await self._complete(
            keys=[keyspace.idempotency(action.user_id, key)],
            args=[
                str(action.user_id),
                key,
                token,
                self._runner.idempotency_ttl_s,
                action.name,
                *outcome_and_fields,
            ],
            wait_for_replicas=True,
        )
        ended = reply[0].decode()
        if ended not in ("completed", "released", "taken_over"):
            raise ScriptArgumentRejected(f"complete_claim: {ended}")
