"""The transaction streams' consumer group and entry ids."""

from redis.exceptions import ResponseError

from service.redis import keyspace
from service.redis.types import RedisClient


async def ensure_consumer_group(redis: RedisClient, bucket: int) -> None:
    """Creates the writers' consumer group (and the stream) of a bucket at ``0`` unless it
    exists, so that no entry is ever skipped."""
    try:
        await redis.xgroup_create(
            keyspace.txn_stream(bucket), keyspace.WRITER_GROUP, id="0", mkstream=True
        )
    except ResponseError as error:
        if not str(error).startswith("BUSYGROUP"):
            raise


def stream_id(raw: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
