"""The one way the service opens Redis."""

from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis.pipelining import AutoPipeline
from service.settings import Settings

# A connection idle this long is PINGed before it carries a command.
HEALTH_CHECK_INTERVAL_S = 1


class _CheckedConnection(Connection):
    """Commands are never retried: a money script whose reply was lost may have been
    applied, so the money calls ask Redis what became of it instead (redis/money.py). But a
    connection idle for a while is PINGed first, and reconnected once if the PING fails
    (after a Redis restart every pooled socket is dead): the command was not sent yet."""

    async def check_health(self) -> None:
        try:
            await super().check_health()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self.disconnect()
            await super().check_health()  # type: ignore[no-untyped-call]


class _PipeliningPool(BlockingConnectionPool):
    """The pool of a client opened by connect_redis; it carries the client's auto-pipeline
    (set once, right after the pool is made), shared by every script of the process, and
    closes the pipeline's connections with its own."""

    auto_pipeline: AutoPipeline

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        await self.auto_pipeline.disconnect()

    def new_pipeline_connection(self) -> AbstractConnection:
        """A connection for the auto-pipeline: like the pool's, but with no socket timeout
        of its own (which costs a timer, and a task per write, on every command): the
        pipeline gives each batch one deadline instead."""
        kwargs = self.connection_kwargs | {"socket_timeout": None}
        return self.connection_class(**kwargs)


def connect_redis(settings: Settings) -> Redis:
    """A client whose pool waits for a free connection instead of failing at the limit,
    and whose script calls share round trips (``script_calls``).

    redis-py's default asyncio pool raises MaxConnectionsError when every connection is
    busy; under a burst that would turn into refused payments.
    """
    pool = _PipeliningPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_timeout_ms / 1000,
        connection_class=_CheckedConnection,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        socket_timeout=settings.redis_socket_timeout_ms / 1000,
        socket_connect_timeout=settings.redis_socket_timeout_ms / 1000,
    )
    pool.auto_pipeline = AutoPipeline(
        pool.new_pipeline_connection,
        max_batch_calls=settings.redis_pipeline_max_calls,
        max_batches_in_flight=settings.redis_pipeline_max_batches,
        timeout_s=settings.redis_socket_timeout_ms / 1000,
    )
    # from_pool: closing the client closes the pool, and with it the pipeline's connections.
    return Redis.from_pool(pool)


def script_calls(redis: Redis) -> AutoPipeline:
    """The auto-pipeline of a client opened by connect_redis, through which scripts are
    called. Any other client is a programming error: its calls would skip the batching and
    the lost-reply classification that the money scripts rely on."""
    pool = redis.connection_pool
    if not isinstance(pool, _PipeliningPool):
        raise TypeError(f"a Redis client not opened by connect_redis: {redis!r}")
    return pool.auto_pipeline
