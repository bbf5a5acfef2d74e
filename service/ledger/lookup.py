"""One transaction by id, from the ledger merged with the unpersisted stream tail
(read-your-writes): what a refund needs to know of the transfer it refunds (docs/holds.md).
"""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import LedgerTransaction
from service.domain.transactions import Transaction
from service.ledger.history import HistoryUnavailable
from service.redis import keyspace
from service.redis.stream_tail import unpersisted_tail
from service.redis.types import RedisClient


async def _stored(engine: AsyncEngine, txn_id: int) -> Transaction | None:
    async with AsyncSession(engine) as session:
        row = await session.scalar(select(LedgerTransaction).where(LedgerTransaction.id == txn_id))
        return None if row is None else Transaction.from_ledger(row)


async def find_transaction(
    redis: RedisClient, engine: AsyncEngine, reader_id: int, txn_id: int, *, tail_max_entries: int
) -> Transaction | None:
    """The transaction with this id, wherever it is, as a party to it (``reader_id``) finds
    it: in the ledger, or in the tail of the reader's bucket; None if there is none (the
    caller tells whether the reader is a party).

    A stored transaction never changes, so the ledger is asked first: most lookups are of
    transactions stored long ago, and they cost one indexed query and no tail. Otherwise
    the tail is read, then the ledger asked again: a transaction acknowledged by the
    writer after the tail was read was committed before that, so the second query finds
    it (lua/stream_tail.lua). Raises HistoryUnavailable when the tail overflows and the
    transaction is not in the part that was read.
    """
    if txn_id < 1:
        return None
    stored = await _stored(engine, txn_id)
    if stored is not None:
        return stored
    tail = await unpersisted_tail(redis, keyspace.bucket_of(reader_id), tail_max_entries)
    for txn in tail.transactions:
        if txn.txn_id == txn_id:
            return txn
    stored = await _stored(engine, txn_id)
    if stored is None and tail.overflow:
        raise HistoryUnavailable(f"more than {tail_max_entries} records are not persisted")
    return stored
