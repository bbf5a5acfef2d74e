"""A limit of events per key in a fixed window (lua/fixed_window_limit.lua): sign-ups per
client address, transfers to unknown recipients per user. Past the limit, the catalog's
refusal (a 429) with the time left until the window ends."""

import math

from redis.asyncio import Redis

from service.domain.refusals import Refusal, Refused
from service.redis.scripts import LuaScript


class WindowLimit:
    def __init__(self, redis: Redis, refusal: Refusal, limit: int, window_s: int) -> None:
        self._script = LuaScript(redis, "fixed_window_limit")
        self._refusal = refusal
        self._limit = str(limit)
        self._window_ms = str(window_s * 1000)

    async def _call(self, key: str, mode: str) -> int:
        return int(await self._script(keys=[key], args=[self._limit, self._window_ms, mode]))

    def _refused(self, wait_ms: int) -> Refused:
        return Refused(self._refusal, retry_after_s=math.ceil(wait_ms / 1000))

    async def count_or_refuse(self, key: str) -> None:
        """Counts this event, or refuses it when the limit is reached."""
        wait_ms = await self._call(key, "count")
        if wait_ms > 0:
            raise self._refused(wait_ms)

    async def refuse_if_reached(self, key: str) -> None:
        """Counts nothing; refuses when the limit is reached."""
        wait_ms = await self._call(key, "look")
        if wait_ms > 0:
            raise self._refused(wait_ms)

    async def count(self, key: str) -> None:
        """Counts an event that has already happened (up to the limit); refuses nothing."""
        await self._call(key, "count")
