"""The count of buckets is fixed when a deployment is created (docs/scaling.md, "Keyspace"):
a user's bucket follows from it, so a process started with another count would look for
every wallet in the wrong place, and issue ids and stamps from other counters and clocks.
Every process checks it as it starts, against the count PostgreSQL recorded at the first
start and the one Redis holds."""

from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.deployment import recorded_bucket_count
from service.redis import keyspace
from service.redis.types import RedisClient


class BucketCountMismatch(Exception):
    """WALLET_BUCKETS is not the count the deployment was created with."""


async def check_bucket_count(redis: RedisClient, engine: AsyncEngine, buckets: int) -> None:
    """Records ``buckets`` on a deployment's first start; raises BucketCountMismatch when
    PostgreSQL or Redis recorded another count. Redis records it too, so that a Redis of
    another deployment (or set up with another count) is refused, and a Redis that lost its
    data takes it again from here (`wallet rebuild`)."""
    recorded = await recorded_bucket_count(engine, buckets)
    if recorded != buckets:
        raise BucketCountMismatch(
            f"WALLET_BUCKETS is {buckets}, but this deployment was created with {recorded}"
            " buckets (PostgreSQL, table deployment): a user's bucket follows from the count,"
            f" so it cannot change. Set WALLET_BUCKETS={recorded} (docs/scaling.md, Keyspace)."
        )
    raw = cast(bytes | None, await redis.get(keyspace.BUCKET_COUNT))
    if raw is None:  # read first: every later start only reads
        await redis.set(keyspace.BUCKET_COUNT, buckets, nx=True)
        raw = cast(bytes, await redis.get(keyspace.BUCKET_COUNT))
    in_redis = int(raw)
    if in_redis != buckets:
        raise BucketCountMismatch(
            f"Redis records {in_redis} buckets ({keyspace.BUCKET_COUNT}) but this deployment"
            f" has {buckets} (PostgreSQL): REDIS_URL names the Redis of another deployment."
        )
