"""The Lua scripts of lua/: loaded once per process, called by SHA.

A script's ``-- @include NAME`` lines are replaced by lua/includes/NAME.lua (helpers
shared by several scripts, as BullMQ does); see ``load_script_source``.
"""

import hashlib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from service.outages import is_outage


class ScriptArgumentRejected(Exception):
    """A script's own validation refused what Python sent, or it answered something no
    caller expects: a bug on this side, never retried."""


class ReplyLost(RedisConnectionError):
    """A script call failed after its command began to be written to Redis (a timeout, a
    dropped connection): the script may have run, or may still run. To most callers an
    outage like any other (it is a ConnectionError); the money scripts find out what became
    of the request instead (service/redis/money.py)."""


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
    script = scripts.joinpath(f"{name}.lua")
    if not script.is_file():
        # The top-level name `lua` is shared with other distributions (README, Architecture).
        raise ScriptIncludeError(
            f"{name}: no {name}.lua in {scripts}; is another package named 'lua' shadowing"
            " the wallet's scripts?"
        )
    source = script.read_text(encoding="utf-8")
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


@cache
def _compiled(name: str) -> tuple[str, str]:
    """(source, SHA1) of a script of lua/: read and hashed once per process."""
    source = load_script_source(name)
    return source, hashlib.sha1(source.encode()).hexdigest()


Arg = str | bytes | int


class LuaScript:
    """One script of lua/, called by SHA (EVALSHA) and loaded again when Redis answers
    NOSCRIPT (after a restart or SCRIPT FLUSH).

    It takes a connection from the pool and sends the command itself, rather than through
    execute_command, to know where a failure happened: before the command is written
    (no free connection, a connection that cannot be opened or fails its health check:
    the script surely did not run, the error is raised as it is) or after (ReplyLost).
    redis-py's own Script wrapper would also add layers (argument checks, a deprecation
    decorator) that cost a measurable share of a request on the money path
    (docs/performance.md).
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self._redis = redis
        self._source, self._sha = _compiled(name)

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply. Raises ReplyLost when the command may have reached Redis
        without its reply coming back; any other outage means it did not run."""
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._send(command)
        except NoScriptError:  # Redis answered: the script did not run
            await self.load()
            return await self._send(command)

    async def _send(self, command: tuple[Arg, ...]) -> Any:
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Nothing of the command has left this process yet: a failure here is an
            # outage in which it surely did not run. (send_command would PING an idle
            # connection too, but after the point where a failure means "maybe sent".)
            await connection.check_health()
            try:
                await connection.send_command(*command, check_health=False)
                return await connection.read_response()
            except ResponseError:
                raise  # Redis answered (NOSCRIPT, an error raised by the script)
            except Exception as error:
                if not is_outage(error):
                    raise
                await connection.disconnect()  # a reply may still come: never read it
                raise ReplyLost(f"{command[0]!s} sent, no reply: {error!r}") from error
        finally:
            await pool.release(connection)

    async def load(self) -> None:
        await self._redis.script_load(self._source)

    async def call_many(self, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]) -> list[Any]:
        """Many calls in one round trip (a pipeline, not a transaction); the replies in order.

        A call that finds the script gone (NOSCRIPT: Redis restarted, or SCRIPT FLUSH ran,
        after the load) did not run, so it is made again on its own, which loads the script.
        """
        await self.load()
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                keys, args = calls[index]
                replies[index] = await self(keys, args)
            elif isinstance(reply, Exception):
                raise reply
        return replies
