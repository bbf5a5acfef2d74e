"""The transactions that may not be in PostgreSQL yet, read from the Redis stream."""

from dataclasses import dataclass

from redis.asyncio import Redis

from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected


@dataclass(frozen=True, slots=True)
class Tail:
    transactions: list[Transaction]  # oldest first
    overflow: bool  # more entries were unpersisted than were scanned


async def unpersisted_tail(redis: Redis, max_entries: int, user_id: int | None = None) -> Tail:
    """Reads the unpersisted tail (of one user, if given) with one atomic script.

    Call it before querying PostgreSQL; see the header of lua/stream_tail.lua for why.
    """
    script = LuaScript(redis, "stream_tail")
    reply: list[bytes | list[bytes]] = await script(
        keys=[keyspace.TXN_STREAM],
        args=[keyspace.WRITER_GROUP, str(max_entries), "" if user_id is None else user_id],
    )
    head = reply[0]
    if head not in (b"0", b"1"):
        raise ScriptArgumentRejected(repr(head))
    transactions = []
    for i in range(2, len(reply), 2):
        flat = reply[i]
        assert isinstance(flat, list)
        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
        transactions.append(Transaction.from_stream_fields(fields))
    return Tail(transactions=transactions, overflow=head == b"1")
