"""What connect_redis opens (service/redis/client.py): one Redis (standalone, or the primary
a Sentinel names), or a cluster (service/redis/cluster.py). Code that uses Redis takes
either: a command that needs a node of a cluster says so where it is sent."""

from typing import TypeAlias

from redis.asyncio import Redis, RedisCluster

RedisClient: TypeAlias = Redis | RedisCluster
