"""One transaction by id, from the ledger merged with the unpersisted stream tail
(read-your-writes): what a refund needs to know of the transfer it refunds (docs/holds.md).
A transfer across buckets has no transaction: its payee finds its credit, their side of it.
"""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import LedgerTransaction
from service.domain.crossings import CrossingRecord
from service.domain.postings import FoundTransaction, crossing_posting
from service.domain.records import StreamRecord
from service.domain.transactions import Transaction
from service.ledger.history import HistoryUnavailable
from service.ledger.posting_reads import credit_of
from service.redis import keyspace
from service.redis.stream_tail import unpersisted_tail
from service.redis.types import RedisClient


async def _stored(engine: AsyncEngine, reader_id: int, txn_id: int) -> FoundTransaction | None:
    async with AsyncSession(engine) as session:
        row = await session.scalar(select(LedgerTransaction).where(LedgerTransaction.id == txn_id))
        if row is not None:
            return Transaction.from_ledger(row)
        if keyspace.BUCKETS == 1:
            return None  # no transfer across buckets (the count is fixed at creation)
        return await credit_of(session, reader_id, txn_id)


def _in_tail(records: list[StreamRecord], reader_id: int, txn_id: int) -> FoundTransaction | None:
    for record in records:
        if isinstance(record, Transaction) and record.txn_id == txn_id:
            return record
        if (
            isinstance(record, CrossingRecord)
            and record.kind == "transfer_in"
            and record.txn_id == txn_id
            and record.to_user_id == reader_id
        ):
            return crossing_posting(record)
    return None


async def find_transaction(
    redis: RedisClient, engine: AsyncEngine, reader_id: int, txn_id: int, *, tail_max_entries: int
) -> FoundTransaction | None:
    """The transaction with this id, wherever it is, as a party to it (``reader_id``) finds
    it: in the ledger, or in the tail of the reader's bucket; for a transfer across buckets
    the credit, when the reader is its payee; None if there is none (the caller tells
    whether the reader is a party).

    A stored transaction never changes, so the ledger is asked first: most lookups are of
    transactions stored long ago, and they cost one indexed query and no tail. Otherwise
    the tail is read, then the ledger asked again: a transaction acknowledged by the
    writer after the tail was read was committed before that, so the second query finds
    it (lua/stream_tail.lua). Raises HistoryUnavailable when the tail overflows and the
    transaction is not in the part that was read.
    """
    if txn_id < 1:
        return None
    stored = await _stored(engine, reader_id, txn_id)
    if stored is not None:
        return stored
    tail = await unpersisted_tail(redis, keyspace.bucket_of(reader_id), tail_max_entries)
    found = _in_tail(tail.records, reader_id, txn_id)
    if found is not None:
        return found
    stored = await _stored(engine, reader_id, txn_id)
    if stored is None and tail.overflow:
        raise HistoryUnavailable(f"more than {tail_max_entries} records are not persisted")
    return stored
