"""Calls the Lua money scripts and turns their return codes into typed results.

Balances are changed only inside the scripts: this module never reads a balance
to write it back. Scripts are called by SHA and loaded again on NOSCRIPT (LuaScript).
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
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


class ScriptIncludeError(Exception):
    """A script's ``-- @include`` lines cannot be honoured; raised while loading it, before
    Redis ever sees the script."""


# A line that asks for an include; it must then be exactly ``-- @include NAME``. Anything
# looser (trailing blank, indented, two names) is refused rather than left as a comment,
# which would leave the script calling functions it does not define.
_INCLUDE_LINE = re.compile(r"^[ \t]*--[ \t]*@include\b.*$", re.MULTILINE)
_INCLUDE = re.compile(r"-- @include ([A-Za-z0-9_]+)")


def load_script_source(name: str, root: Traversable | None = None) -> str:
    """A script from lua/ (or from ``root``, for tests) with each ``-- @include NAME`` line
    replaced by includes/NAME.lua: helpers shared by several scripts, as BullMQ does.

    Includes are one level deep: an include may not include another. The script lists
    everything it inlines, in the order Lua needs (an include's ``local`` functions exist
    only below it), so when two includes need a third it is listed once, above both.
    Refused with ScriptIncludeError, the message starting with the chain
    (``deposit -> idempotency``): an include line inside an include (which rules out
    cycles), the same include twice in a script (its second copy would redefine, and
    shadow, the first's ``local`` functions), a malformed include line, a missing file.
    """
    scripts = resources.files("lua") if root is None else root
    source = scripts.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    included: set[str] = set()

    def inline(line: re.Match[str]) -> str:
        include = _include_name(line.group(0), name)
        chain = f"{name} -> {include}"
        if include in included:
            raise ScriptIncludeError(
                f"{chain}: included twice (a second copy would shadow the first's locals)"
            )
        included.add(include)
        path = scripts.joinpath("includes", f"{include}.lua")
        if not path.is_file():
            raise ScriptIncludeError(f"{chain}: no file includes/{include}.lua")
        text = path.read_text(encoding="utf-8")
        nested = _INCLUDE_LINE.search(text)
        if nested is not None:
            inner = nested.group(0).split("@include", 1)[1].strip()
            raise ScriptIncludeError(
                f"{chain} -> {inner}: an include cannot include another;"
                f" include it from {name}.lua itself, before {include}"
            )
        return text

    return _INCLUDE_LINE.sub(inline, source)


def _include_name(line: str, script: str) -> str:
    match = _INCLUDE.fullmatch(line)
    if match is None:
        raise ScriptIncludeError(
            f"{script}: malformed include line {line!r} (expected '-- @include NAME')"
        )
    return match.group(1)


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
