import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from service.engines.valkey import start_valkey
from service.redis.checks import UnsafeRedis, check_redis_durability
from service.redis.client import connect_redis
from service.redis.pools import HEALTH_CHECK_INTERVAL_S
from service.redis.types import RedisClient
from service.settings import Settings


class ConfiguredRedis:
    """Answers CONFIG GET like a Redis with the given settings."""

    def __init__(self, **config: str) -> None:
        self._config = {k.replace("_", "-"): v for k, v in config.items()}

    async def execute_command(self, command: str, name: str) -> dict[str, str]:
        assert command == "CONFIG GET", command
        return {k: v for k, v in self._config.items() if k == name}


def as_redis(fake: Any) -> RedisClient:
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


async def test_the_real_redis_passes(redis_client: RedisClient) -> None:
    await check_redis_durability(redis_client, allow_evicting_redis=False)


async def test_pooled_connections_survive_a_redis_restart(tmp_path: Path) -> None:
    """Idle pooled connections are checked (PING) and reconnected before a command is sent;
    without that, the first command on each of them after a restart failed."""
    first = start_valkey(tmp_path)
    client = connect_redis(Settings(redis_url=first.url))
    try:
        await asyncio.gather(*(client.set(f"k{n}", n) for n in range(8)))  # several connections
        first.stop()
        with start_valkey(tmp_path, port=first.port):
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_S + 0.2)
            results = await asyncio.gather(*(client.set(f"k{n}", n) for n in range(8)))
            assert results == [True] * 8
    finally:
        await client.aclose()
        first.stop()
