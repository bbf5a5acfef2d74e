"""Held money written straight into Redis, as lua/includes/holds.lua reads it: for tests of
the scripts that spend from available (batches, refunds) without the hold scripts."""

import time

from service.redis import keyspace
from service.redis.types import RedisClient

HOUR_US = 3600 * 1_000_000


def now_us() -> int:
    return int(time.time() * 1_000_000)


async def put_hold(
    redis: RedisClient, payer: int, hold_id: int, to_user_id: int, amount: int, expires_at_us: int
) -> None:
    """A pending hold on the payer's side: a member of holds:{payer} and held_kopecks."""
    await redis.zadd(
        keyspace.pending_holds(payer), {f"{hold_id}:{to_user_id}:{amount}": expires_at_us}
    )
    await redis.hincrby(keyspace.user(payer), "held_kopecks", amount)
