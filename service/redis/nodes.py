"""Commands about a server rather than a key (PING, CONFIG GET, INFO): on a cluster each
primary answers for itself, so they are sent to every primary (redis-py would send them to
one node of its choice)."""

from typing import Any

from redis.asyncio import RedisCluster

from service.redis.types import RedisClient


async def on_every_primary(redis: RedisClient, *command: str) -> list[Any]:
    """The replies of every primary to ``command`` (of the one Redis, when not a cluster).
    A multi-word command is one argument, as redis-py spells it: ``"CONFIG GET"``."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # a new client knows no node before its first command
        return [
            await redis.execute_command(*command, target_nodes=node)
            for node in redis.get_primaries()
        ]
    return [await redis.execute_command(*command)]  # type: ignore[no-untyped-call]
