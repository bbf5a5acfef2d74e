"""The one way the service opens Redis: a standalone server (``redis://``), or the primary
of a deployment with replicas and Sentinel (``redis+sentinel://``, service/redis/sentinel.py)."""

from redis.asyncio import Redis

from service.redis.pipelining import AutoPipeline
from service.redis.pools import HEALTH_CHECK_INTERVAL_S, CheckedConnection, PipeliningPool
from service.redis.replicas import replica_wait
from service.redis.sentinel import open_sentinel_pool
from service.settings import Settings, sentinel_url


def connect_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection instead of failing at the limit,
    and whose script calls share round trips (service/redis/pipelining.py).

    redis-py's default asyncio pool raises MaxConnectionsError when every connection is
    busy; under a burst that would turn into refused payments.
    """
    options = {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_pool_wait_timeout_ms / 1000,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "socket_timeout": settings.redis_socket_timeout_ms / 1000,
        "socket_connect_timeout": settings.redis_socket_timeout_ms / 1000,
    }
    sentinel = sentinel_url(settings.redis_url)
    pool: PipeliningPool
    if sentinel is None:
        pool = PipeliningPool.from_url(
            settings.redis_url, connection_class=CheckedConnection, **options
        )
    else:
        pool = open_sentinel_pool(sentinel, **options)
    pool.auto_pipeline = AutoPipeline(
        pool.new_pipeline_connection,
        max_batch_calls=settings.redis_pipeline_max_calls,
        max_batches_in_flight=settings.redis_pipeline_max_batches,
        timeout_s=settings.redis_socket_timeout_ms / 1000,
        replica_wait=replica_wait(settings),
    )
    # from_pool: closing the client closes the pool, and with it the pipeline's connections.
    return Redis.from_pool(pool)
