"""Start-up checks of the Redis the balances live in."""

import logging
from typing import cast

from redis.exceptions import ResponseError

from service.redis.nodes import on_every_primary
from service.redis.types import RedisClient

log = logging.getLogger("wallet.redis")

SAFE_EVICTION_POLICIES = frozenset({"noeviction"})


class UnsafeRedis(Exception):
    pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def check_redis_durability(redis: RedisClient, allow_evicting_redis: bool) -> None:
    """Refuses a Redis that may evict keys: eviction would delete balances.

    Warns when there is no append-only file: a Redis restart would then lose the
    acknowledged transactions the writer has not yet stored in PostgreSQL. On a cluster,
    every primary is checked.
    """
    try:
        policies = await on_every_primary(redis, "CONFIG GET", "maxmemory-policy")
        appendonly = await on_every_primary(redis, "CONFIG GET", "appendonly")
    except ResponseError as exc:  # managed Redis services often disable CONFIG
        log.warning("cannot read the Redis configuration (%s); durability is unchecked", exc)
        return
    for policy, aof in zip(policies, appendonly, strict=True):
        raw = cast(dict[str | bytes, str | bytes], policy | aof)
        _check_config({_text(k): _text(v) for k, v in raw.items()}, allow_evicting_redis)


def _check_config(config: dict[str, str], allow_evicting_redis: bool) -> None:
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
