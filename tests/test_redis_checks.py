import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from service.redis_checks import UnsafeRedis, check_redis_durability


class ConfiguredRedis:
    """Answers CONFIG GET like a Redis with the given settings."""

    def __init__(self, **config: str) -> None:
        self._config = {k.replace("_", "-"): v for k, v in config.items()}

    async def config_get(self, name: str) -> dict[str, str]:
        return {k: v for k, v in self._config.items() if k == name}


def as_redis(fake: Any) -> Redis:
    return fake  # type: ignore[no-any-return]


async def test_evicting_redis_is_refused_unless_overridden(
    caplog: pytest.LogCaptureFixture,
) -> None:
    evicting = as_redis(ConfiguredRedis(maxmemory_policy="allkeys-lru", appendonly="yes"))
    with pytest.raises(UnsafeRedis, match="allkeys-lru"):
        await check_redis_durability(evicting, allow_evicting_redis=False)
    with caplog.at_level(logging.WARNING):
        await check_redis_durability(evicting, allow_evicting_redis=True)
    assert "overridden" in caplog.text


async def test_missing_append_only_file_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        await check_redis_durability(
            as_redis(ConfiguredRedis(maxmemory_policy="noeviction", appendonly="yes")), False
        )
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        await check_redis_durability(
            as_redis(ConfiguredRedis(maxmemory_policy="noeviction", appendonly="no")), False
        )
    assert "append-only" in caplog.text


async def test_the_real_redis_passes(redis_client: Redis) -> None:
    await check_redis_durability(redis_client, allow_evicting_redis=False)
