"""The one way the service opens Redis: a standalone server (``redis://``), the primary of a
deployment with replicas and Sentinel (``redis+sentinel://``, service/redis/sentinel.py), or
a Redis/Valkey Cluster (``redis+cluster://``, service/redis/cluster.py)."""

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.redis import keyspace
from service.redis.cluster import ClusterClient, ClusterScriptCalls, ScriptConnection
from service.redis.pipelining import AutoPipeline
from service.redis.pools import HEALTH_CHECK_INTERVAL_S, CheckedConnection, PipeliningPool
from service.redis.replicas import replica_wait
from service.redis.sentinel import open_sentinel_pool
from service.redis.types import RedisClient
from service.settings import ClusterUrl, Settings, cluster_url, sentinel_url

__all__ = ["RedisClient", "connect_redis"]


def connect_redis(settings: Settings) -> RedisClient:
    """A client whose pool waits for a free connection instead of failing at the limit,
    and whose script calls share round trips (service/redis/pipelining.py).

    redis-py's default asyncio pool raises MaxConnectionsError when every connection is
    busy; under a burst that would turn into refused payments. A cluster's client is a
    RedisCluster (service/redis/cluster.py).
    """
    # Every key this process builds from now on is of the deployment's buckets.
    keyspace.use_buckets(settings.buckets)
    cluster = cluster_url(settings.redis_url)
    if cluster is not None:
        return _connect_cluster(cluster, settings)
    options = {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_pool_wait_timeout_ms / 1000,
        **_connection_options(settings),
    }
    sentinel = sentinel_url(settings.redis_url)
    pool: PipeliningPool
    if sentinel is None:
        pool = PipeliningPool.from_url(
            settings.redis_url, connection_class=CheckedConnection, **options
        )
    else:
        pool = open_sentinel_pool(sentinel, **options)
    pool.auto_pipeline = _auto_pipeline(pool.new_pipeline_connection, settings)
    # from_pool: closing the client closes the pool, and with it the pipeline's connections.
    return Redis.from_pool(pool)


def _connection_options(settings: Settings) -> dict[str, Any]:
    timeout_s = settings.redis_socket_timeout_ms / 1000
    return {
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }


def _auto_pipeline(new_connection: Any, settings: Settings) -> AutoPipeline:
    return AutoPipeline(
        new_connection,
        max_batch_calls=settings.redis_pipeline_max_calls,
        max_batches_in_flight=settings.redis_pipeline_max_batches,
        timeout_s=settings.redis_socket_timeout_ms / 1000,
        replica_wait=replica_wait(settings),
    )


def _connect_cluster(url: ClusterUrl, settings: Settings) -> ClusterClient:
    """A cluster client that reads the slot map on first use. Commands are never retried
    by redis-py (its default resends a command after a timeout, when it may have run); it
    still follows MOVED and ASK, which mean the command did not run."""
    options = _connection_options(settings)
    cluster = ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in url.seeds],
        max_connections=settings.redis_max_connections,  # per node
        retry=Retry(NoBackoff(), 0),
        **options,
    )
    # Connections to the nodes it finds are checked before use, as connect_redis's pools'
    # are (RedisCluster takes no connection class; the nodes are made from these options).
    cluster.connection_kwargs["connection_class"] = CheckedConnection

    def new_pipeline(host: str, port: int) -> AutoPipeline:
        # No socket timeout of its own: the pipeline gives each batch one deadline.
        kwargs = options | {"host": host, "port": port, "socket_timeout": None}
        return _auto_pipeline(lambda: ScriptConnection(**kwargs), settings)

    cluster.auto_pipeline = ClusterScriptCalls(cluster, new_pipeline)
    return cluster
