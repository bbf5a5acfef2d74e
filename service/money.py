"""Calls the Lua money scripts and turns their return codes into typed results.

Balances are changed only inside the scripts: this module never reads a balance
to write it back. Scripts are called by SHA and loaded again on NOSCRIPT (LuaScript).
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from service import redis_keys
from service.amounts import MAX_AMOUNT_KOPECKS

IDEMPOTENCY_KEY_MAX_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Accepted:
    txn_id: int
    created_at_us: int
    replayed: bool


class Refused(Exception):
    """The script refused the operation; nothing moved. ``code`` is the contract's error code."""

    code = "refused"

    def __init__(self, replayed: bool = False) -> None:
        super().__init__(self.code)
        self.replayed = replayed


class RecipientNotFound(Refused):
    code = "recipient_not_found"


class InsufficientFunds(Refused):
    code = "insufficient_funds"


class BalanceLimitExceeded(Refused):
    code = "balance_limit_exceeded"


class SelfTransfer(Refused):
    code = "self_transfer"


class IdempotencyKeyReused(Refused):
    code = "idempotency_key_reused"


class AccountNotFound(Refused):
    """The user has no wallet in Redis: Redis lost data and was not rebuilt."""

    code = "account_not_found"


class NotRebuilt(Refused):
    """Redis has no transaction counter: it lost its data and `wallet rebuild` has not run."""

    code = "not_rebuilt"


class Unauthorized(Refused):
    """The session checked by the script is gone, expired or belongs to another user."""

    code = "unauthorized"


class ScriptArgumentRejected(Exception):
    """The script's own validation refused what Python sent: a bug on this side."""


_REFUSALS: dict[str, type[Refused]] = {
    cls.code: cls
    for cls in (
        RecipientNotFound,
        InsufficientFunds,
        BalanceLimitExceeded,
        SelfTransfer,
        IdempotencyKeyReused,
        AccountNotFound,
        NotRebuilt,
        Unauthorized,
    )
}


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


def is_valid_idempotency_key(key: str) -> bool:
    return 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH and all(" " <= c <= "~" for c in key)


_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


def load_script_source(name: str) -> str:
    """A script from lua/, with each ``-- @include NAME`` line replaced by
    lua/includes/NAME.lua (helpers shared by several scripts, as BullMQ does)."""
    scripts = resources.files("lua")
    source = scripts.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(
        lambda match: scripts.joinpath("includes", f"{match.group(1)}.lua").read_text("utf-8"),
        source,
    )


Arg = str | bytes | int


class LuaScript:
    """One script of lua/, called by SHA (EVALSHA) and loaded again when Redis answers
    NOSCRIPT (after a restart or SCRIPT FLUSH).

    It calls execute_command directly: redis-py's own Script wrapper adds layers
    (argument checks, a deprecation decorator) that cost a measurable share of a
    request on the money path (docs/performance.md).
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self._redis = redis
        self._source = load_script_source(name)
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except NoScriptError:
            await self.load()
            return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]

    async def load(self) -> None:
        await self._redis.script_load(self._source)

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[Arg]) -> None:
        """Adds a call to a pipeline; ``load()`` first, as a pipeline cannot retry NOSCRIPT."""
        pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)


def _check_amount(amount_kopecks: int) -> None:
    if type(amount_kopecks) is not int or not 1 <= amount_kopecks <= MAX_AMOUNT_KOPECKS:
        raise ValueError(f"amount_kopecks out of range: {amount_kopecks!r}")


def _check_user_id(user_id: int) -> None:
    if type(user_id) is not int or user_id < 1:
        raise ValueError(f"bad user id: {user_id!r}")


def _result(reply: list[bytes]) -> Accepted:
    outcome = reply[0].decode()
    replayed = reply[3] == b"1"
    if outcome == "ok":
        return Accepted(txn_id=int(reply[1]), created_at_us=int(reply[2]), replayed=replayed)
    refusal = _REFUSALS.get(outcome)
    if refusal is None:
        raise ScriptArgumentRejected(outcome)
    raise refusal(replayed=replayed)


class MoneyScripts:
    """The three scripts, bound to one Redis client."""

    def __init__(self, redis: Redis, idempotency_ttl_s: int) -> None:
        self._idempotency_ttl = str(idempotency_ttl_s)
        self._register_user = LuaScript(redis, "register_user")
        self._deposit = LuaScript(redis, "deposit")
        self._transfer = LuaScript(redis, "transfer")

    async def register_user(self, user_id: int) -> bool:
        """Gives the user a zero balance unless they have one; True if it was created."""
        _check_user_id(user_id)
        reply: list[bytes] = await self._register_user(
            keys=[redis_keys.user(user_id)], args=[str(user_id)]
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
        keys = [redis_keys.TXN_SEQ, redis_keys.TXN_STREAM, redis_keys.user(user_id)]
        if idempotency_key is not None:
            keys.append(redis_keys.idempotency(user_id, idempotency_key))
        if session is not None:
            keys.append(session.redis_key)
        args = [str(user_id), str(amount_kopecks), idempotency_key or "", self._idempotency_ttl]
        args += _NO_SESSION_ARGS if session is None else session.args()
        return _result(await self._deposit(keys=keys, args=args))

    async def transfer(
        self,
        from_user_id: int,
        to_user_id: int,
        amount_kopecks: int,
        idempotency_key: str | None = None,
        session: SessionCheck | None = None,
    ) -> Accepted:
        _check_user_id(from_user_id)
        _check_user_id(to_user_id)
        _check_amount(amount_kopecks)
        keys = [
            redis_keys.TXN_SEQ,
            redis_keys.TXN_STREAM,
            redis_keys.user(from_user_id),
            redis_keys.user(to_user_id),
        ]
        if idempotency_key is not None:
            keys.append(redis_keys.idempotency(from_user_id, idempotency_key))
        if session is not None:
            keys.append(session.redis_key)
        args = [
            str(from_user_id),
            str(to_user_id),
            str(amount_kopecks),
            idempotency_key or "",
            self._idempotency_ttl,
        ]
        args += _NO_SESSION_ARGS if session is None else session.args()
        return _result(await self._transfer(keys=keys, args=args))
