"""Fixtures: each test run claims its own Redis database number; each test starts empty."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio import Redis

from service.money import MoneyScripts
from service.redis_client import connect_redis
from service.settings import Settings

REDIS_HOST_URL = os.environ.get("WALLET_TEST_REDIS", "redis://127.0.0.1:6379")
CLAIM_KEY = "wallet-test-run-claim"
CLAIM_TTL_S = 6 * 3600
# Deletes every key but the claim, atomically, so no other run can claim the database meanwhile.
_EMPTY_BUT_CLAIM = """
for _, key in ipairs(redis.call('KEYS', '*')) do
  if key ~= KEYS[1] then redis.call('DEL', key) end
end
"""


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    run_id = uuid.uuid4().hex
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_HOST_URL}/{db}")
        if client.set(CLAIM_KEY, run_id, nx=True, ex=CLAIM_TTL_S):
            try:
                yield f"{REDIS_HOST_URL}/{db}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    pytest.fail(f"no free Redis database on {REDIS_HOST_URL}: all of 1..15 are claimed")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url))
    await client.eval(_EMPTY_BUT_CLAIM, 1, CLAIM_KEY)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def money(redis_client: Redis, settings: Settings) -> MoneyScripts:
    return MoneyScripts(redis_client, settings.idempotency_ttl_s)
