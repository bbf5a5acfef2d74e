"""Held money written straight into Redis, as lua/includes/holds.lua reads it: for tests of
the scripts that spend from available (batches, refunds) without the hold scripts."""

import time
from typing import Any

from redis.asyncio import Redis

from service.redis import keyspace
from service.redis.scripts import Arg, LuaScript, ReplyLost

HOUR_US = 3600 * 1_000_000


def now_us() -> int:
    return int(time.time() * 1_000_000)


async def put_hold(
    redis: Redis, payer: int, hold_id: int, to_user_id: int, amount: int, expires_at_us: int
) -> None:
    """A pending hold on the payer's side: a member of holds:{payer} and held_kopecks."""
    await redis.zadd(
        keyspace.pending_holds(payer), {f"{hold_id}:{to_user_id}:{amount}": expires_at_us}
    )
    await redis.hincrby(keyspace.user(payer), "held_kopecks", amount)


class LosesTheReply:
    """A money script that runs first (``runs``) or not at all (its command is still on its
    way), then fails as a reply lost after sending does."""

    def __init__(self, script: LuaScript, runs: bool = True) -> None:
        self.script = script
        self.runs = runs
        self.sent: list[tuple[list[str], list[Arg]]] = []

    async def __call__(self, keys: list[str], args: list[Arg]) -> Any:
        self.sent.append((keys, args))
        if self.runs:
            await self.script(keys=keys, args=args)
        raise ReplyLost("EVALSHA sent, no reply: TimeoutError('Timeout reading')")

    async def arrives_late(self) -> Any:
        """The command that was on its way reaches Redis after all: its raw reply."""
        keys, args = self.sent[-1]
        return await self.script(keys=keys, args=args)
