"""A limit of events per key in a fixed window (lua/fixed_window_limit.lua): sign-ups per
client address, transfers to unknown recipients per user. Each answer is None when the
limit is not reached, else the seconds until the window ends (the caller's Retry-After)."""

import math

from service.redis.scripts import LuaScript
from service.redis.types import RedisClient


class WindowLimit:
    def __init__(self, redis: RedisClient, limit: int, window_s: int) -> None:
        self._script = LuaScript(redis, "fixed_window_limit")
        self._limit = str(limit)
        self._window_ms = str(window_s * 1000)

    async def _call(self, key: str, mode: str) -> int | None:
        wait_ms = int(await self._script(keys=[key], args=[self._limit, self._window_ms, mode]))
        return math.ceil(wait_ms / 1000) if wait_ms > 0 else None

    async def count_unless_reached(self, key: str) -> int | None:
        """Counts this event, unless the limit is reached."""
        return await self._call(key, "count")

    async def retry_after_s(self, key: str) -> int | None:
        """Counts nothing."""
        return await self._call(key, "look")
