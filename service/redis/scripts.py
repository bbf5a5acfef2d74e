"""The Lua scripts of lua/: loaded once per process, called by SHA.

A script's ``-- @include NAME`` lines are replaced by lua/includes/NAME.lua (helpers
shared by several scripts, as BullMQ does).
"""

import hashlib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


class ScriptArgumentRejected(Exception):
    """A script's own validation refused what Python sent, or it answered something no
    caller expects: a bug on this side, never retried."""


def load_script_source(name: str) -> str:
    """A script from lua/ with its includes expanded."""
    return _compiled(name)[0]


@cache
def _compiled(name: str) -> tuple[str, str]:
    """(source, SHA1): read and hashed once per process."""
    source = _expand(name)
    return source, hashlib.sha1(source.encode()).hexdigest()


def _expand(name: str) -> str:
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
        self._source, self._sha = _compiled(name)

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
