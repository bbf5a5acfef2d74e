"""The one way the service opens Redis."""

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis

from service.settings import Settings

# ``REDIS_URL=memory://``: an in-process Redis (fakeredis, with Lua) for `wallet serve
# --embedded`. Every client of the process shares this one server.
MEMORY_URL = "memory://"
_memory_server: fakeredis.FakeServer | None = None


def connect_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection instead of failing at the limit.

    redis-py's default asyncio pool raises MaxConnectionsError when every connection is
    busy; under a burst that would turn into refused payments.
    """
    if settings.redis_url == MEMORY_URL:
        return _memory_redis()
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_timeout_ms / 1000,
    )
    return Redis(connection_pool=pool)


def _memory_redis() -> Redis:
    global _memory_server
    if _memory_server is None:
        _memory_server = fakeredis.FakeServer()
    client: Redis = fakeredis.FakeAsyncRedis(server=_memory_server)
    return client
