"""The one way the service opens Redis."""

from redis.asyncio import BlockingConnectionPool, Redis

from service.settings import Settings


def connect_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection instead of failing at the limit.

    redis-py's default asyncio pool raises MaxConnectionsError when every connection is
    busy; under a burst that would turn into refused payments.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_timeout_ms / 1000,
    )
    return Redis(connection_pool=pool)
