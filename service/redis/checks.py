"""Start-up checks of the Redis the balances live in."""

import logging
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

log = logging.getLogger("wallet.redis")

SAFE_EVICTION_POLICIES = frozenset({"noeviction"})


class UnsafeRedis(Exception):
    pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def check_redis_durability(redis: Redis, allow_evicting_redis: bool) -> None:
    """Refuses a Redis that may evict keys: eviction would delete balances.

    Warns when there is no append-only file: a Redis restart would then lose the
    acknowledged transactions the writer has not yet stored in PostgreSQL.
    """
    try:
        raw = cast(
            dict[str | bytes, str | bytes],
            await redis.config_get("maxmemory-policy") | await redis.config_get("appendonly"),
        )
    except ResponseError as exc:  # managed Redis services often disable CONFIG
        log.warning("cannot read the Redis configuration (%s); durability is unchecked", exc)
        return
    config = {_text(k): _text(v) for k, v in raw.items()}
    policy = config.get("maxmemory-policy") or "unknown"
    if policy not in SAFE_EVICTION_POLICIES:
        message = (
            f"Redis maxmemory-policy is {policy!r}: it may evict balances. Set it to"
            " 'noeviction', or set WALLET_ALLOW_EVICTING_REDIS=true to run anyway."
        )
        if not allow_evicting_redis:
            raise UnsafeRedis(message)
        log.warning("%s (overridden)", message)
    if config.get("appendonly") != "yes":
        log.warning(
            "Redis has no append-only file: a Redis restart loses acknowledged transactions"
            " that are not yet in PostgreSQL. Run it with --appendonly yes."
        )
