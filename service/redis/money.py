"""The money scripts, bound to one Redis client: typed calls in, typed results out.

Balances are changed only inside the scripts: this module never reads a balance to write
it back. A script's refusal comes back as the catalog's ``Refused``
(service/domain/refusals.py), with ``replayed`` when it was recorded under the
Idempotency-Key by an earlier request.
"""

import re
from dataclasses import dataclass

from redis.asyncio import Redis

from service.domain.amounts import MAX_AMOUNT_KOPECKS
from service.domain.limits import MAX_USER_ID, USERNAME_PATTERN
from service.domain.refusals import BY_LUA_OUTCOME, Refused
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected


@dataclass(frozen=True, slots=True)
class Accepted:
    txn_id: int
    created_at_us: int
    replayed: bool


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


def _check_amount(amount_kopecks: int) -> None:
    if type(amount_kopecks) is not int or not 1 <= amount_kopecks <= MAX_AMOUNT_KOPECKS:
        raise ValueError(f"amount_kopecks out of range: {amount_kopecks!r}")


def _check_user_id(user_id: int) -> None:
    if type(user_id) is not int or not 1 <= user_id <= MAX_USER_ID:
        raise ValueError(f"bad user id: {user_id!r}")


def _check_username(username: str) -> None:
    if type(username) is not str or re.fullmatch(USERNAME_PATTERN, username) is None:
        raise ValueError(f"bad username: {username!r}")


def _result(reply: list[bytes]) -> Accepted:
    outcome = reply[0].decode()
    replayed = reply[3] == b"1"
    if outcome == "ok":
        return Accepted(txn_id=int(reply[1]), created_at_us=int(reply[2]), replayed=replayed)
    refusal = BY_LUA_OUTCOME.get(outcome)
    if refusal is None:
        raise ScriptArgumentRejected(outcome)
    raise Refused(refusal, replayed=replayed)


class MoneyScripts:
    def __init__(self, redis: Redis, idempotency_ttl_s: int) -> None:
        self._idempotency_ttl_s = str(idempotency_ttl_s)
        self._register_user = LuaScript(redis, "register_user")
        self._deposit = LuaScript(redis, "deposit")
        self._transfer = LuaScript(redis, "transfer")

    async def register_user(self, user_id: int) -> bool:
        """Gives the user a zero balance unless they have one; True if it was created."""
        _check_user_id(user_id)
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
        _check_user_id(user_id)
        _check_amount(amount_kopecks)
        keys = [keyspace.TXN_SEQ, keyspace.TXN_STREAM, keyspace.user(user_id)]
        if idempotency_key is not None:
            keys.append(keyspace.idempotency(user_id, idempotency_key))
        if session is not None:
            keys.append(session.redis_key)
        args = [str(user_id), str(amount_kopecks), idempotency_key or "", self._idempotency_ttl_s]
        args += _NO_SESSION_ARGS if session is None else session.args()
        return _result(await self._deposit(keys=keys, args=args))

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
        _check_user_id(from_user_id)
        if to_user_id is not None:
            _check_user_id(to_user_id)
        if to_username is not None:
            _check_username(to_username)
        elif to_user_id is None:
            raise ValueError("a transfer needs to_user_id or to_username")
        _check_amount(amount_kopecks)
        keys = [keyspace.TXN_SEQ, keyspace.TXN_STREAM, keyspace.user(from_user_id)]
        if to_user_id is not None:
            keys.append(keyspace.user(to_user_id))
        if idempotency_key is not None:
            keys.append(keyspace.idempotency(from_user_id, idempotency_key))
        if session is not None:
            keys.append(session.redis_key)
        args = [
            str(from_user_id),
            "" if to_user_id is None else str(to_user_id),
            str(amount_kopecks),
            idempotency_key or "",
            self._idempotency_ttl_s,
        ]
        args += _NO_SESSION_ARGS if session is None else session.args()
        args.append(to_username or "")
        return _result(await self._transfer(keys=keys, args=args))
