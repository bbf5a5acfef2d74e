"""Claiming a Redis database number (1..15) of one's own, so that runs never share data."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from service.redis.types import RedisClient

CLAIM_KEY = "wallet-test-run-claim"
CLAIM_TTL_S = 6 * 3600
# Deletes every key but the claim, atomically, so no other run can claim the database meanwhile.
_EMPTY_BUT_CLAIM = """
for _, key in ipairs(redis.call('KEYS', '*')) do
  if key ~= KEYS[1] then redis.call('DEL', key) end
end
"""


@contextmanager
def claimed_redis_database(host_url: str) -> Iterator[str]:
    """Yields the URL of a database nobody else holds; flushes it when done."""
    run_id = uuid.uuid4().hex
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{host_url}/{db}")
        if client.set(CLAIM_KEY, run_id, nx=True, ex=CLAIM_TTL_S):
            # A run that crashed may have left keys behind its expired claim.
            client.eval(_EMPTY_BUT_CLAIM, 1, CLAIM_KEY)
            try:
                yield f"{host_url}/{db}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise RuntimeError(f"no free Redis database on {host_url}: all of 1..15 are claimed")


async def empty_but_claim(client: RedisClient) -> None:
    """Empties the claimed database between tests, keeping the claim."""
    await client.eval(_EMPTY_BUT_CLAIM, 1, CLAIM_KEY)
