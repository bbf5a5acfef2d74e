"""The connection pools connect_redis opens (service/redis/client.py): redis-py's blocking
pool, whose connections are checked before use, carrying the client's auto-pipeline."""

from redis.asyncio import BlockingConnectionPool, Connection
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis.pipelining import AutoPipeline

# A connection idle this long is PINGed before it carries a command.
HEALTH_CHECK_INTERVAL_S = 1


class CheckedConnection(Connection):
    """Commands are never retried: a money script whose reply was lost may have been
    applied, so the money calls ask Redis what became of it instead (redis/money.py). But a
    connection idle for a while is PINGed first, and reconnected once if the PING fails
    (after a Redis restart every pooled socket is dead): the command was not sent yet."""

    async def check_health(self) -> None:
        try:
            await super().check_health()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self.disconnect()
            await self.open()
            await super().check_health()  # type: ignore[no-untyped-call]

    async def open(self) -> None:
        """Opens the socket and does the handshake, without a health check of its own (it
        would come back here). A Sentinel-managed connection asks the Sentinels where the
        primary is first (service/redis/sentinel.py)."""
        await self.connect_check_health(check_health=False)


class PipeliningPool(BlockingConnectionPool):
    """A pool of a client opened by connect_redis; it carries the client's auto-pipeline
    (set once, right after the pool is made), shared by every script of the process, and
    closes the pipeline's connections with its own."""

    auto_pipeline: AutoPipeline

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        await self.auto_pipeline.disconnect(inuse_connections)

    def new_pipeline_connection(self) -> AbstractConnection:
        """A connection for the auto-pipeline: like the pool's, but with no socket timeout
        of its own (which costs a timer, and a task per write, on every command): the
        pipeline gives each batch one deadline instead."""
        kwargs = self.connection_kwargs | {"socket_timeout": None}
        return self.connection_class(**kwargs)
