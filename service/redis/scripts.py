"""The Lua scripts of lua/: loaded once per process, called by SHA.

A script's ``-- @include NAME`` lines are replaced by lua/includes/NAME.lua (helpers
shared by several scripts, as BullMQ does); see ``load_script_source``.
"""

import asyncio
import hashlib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.exceptions import NoScriptError

from service.redis.pipelining import Arg, script_calls
from service.redis.types import RedisClient

# NOSCRIPT means the script did not run: Redis lost its scripts (a restart, a failover, SCRIPT
# FLUSH), and may lose them again between the load and the call. So many loads, then the
# NOSCRIPT is raised.
NOSCRIPT_RELOADS = 3


class ScriptArgumentRejected(Exception):
    """A script's own validation refused what Python sent, or it answered something no
    caller expects: a bug on this side, never retried."""


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
    return _with_sha(load_script_source(name))


def _with_sha(source: str) -> tuple[str, str]:
    return source, hashlib.sha1(source.encode()).hexdigest()


class LuaScript:
    """One script of lua/, called by SHA (EVALSHA) and loaded again when Redis answers
    NOSCRIPT (after a restart or SCRIPT FLUSH). On a cluster, each call goes to the primary
    of its keys' slot, and a load to every primary (service/redis/cluster.py).

    Calls go through the client's auto-pipeline (service/redis/pipelining.py), which tells
    a failure before the command was written (raised as it is: the script surely did not
    run) from one after (ReplyLost). redis-py's own Script wrapper would add layers
    (argument checks, a deprecation decorator) that cost a measurable share of a request
    on the money path (docs/performance.md).
    """

    def __init__(self, redis: RedisClient, name: str, root: Traversable | None = None) -> None:
        """The script ``name`` of lua/, or of ``root`` (for tests)."""
        self._redis = redis
        self._calls = script_calls(redis)
        if root is None:
            self._source, self._sha = _compiled(name)
        else:
            self._source, self._sha = _with_sha(load_script_source(name, root))

    async def __call__(
        self, keys: Sequence[str], args: Sequence[Arg], *, wait_for_replicas: bool = False
    ) -> Any:
        """The script's reply. Raises ReplyLost when the command may have reached Redis
        without its reply coming back; any other outage means it did not run.
        ``wait_for_replicas`` (the money scripts): a reply only once the replicas have the
        script's writes, when WALLET_REDIS_MIN_REPLICAS asks for it; else
        ReplicasNotConfirmed, with the reply (service/redis/replicas.py)."""
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        for _ in range(NOSCRIPT_RELOADS):
            try:
                return await self._calls.call(command, wait_for_replicas=wait_for_replicas)
            except NoScriptError:  # Redis answered: the script did not run
                await self.load()
        return await self._calls.call(command, wait_for_replicas=wait_for_replicas)

    async def load(self) -> None:
        await self._redis.script_load(self._source)

    async def call_many(self, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]) -> list[Any]:
        """Many calls, sharing round trips through the auto-pipeline; the replies in order.
        Loads the script first, so that a Redis without it answers NOSCRIPT at most once
        per call rather than to every one."""
        await self.load()
        return await asyncio.gather(*(self(keys, args) for keys, args in calls))
