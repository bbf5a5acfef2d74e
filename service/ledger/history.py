"""Transaction histories: PostgreSQL merged with what the writer has not persisted yet.

Read-your-writes: a transaction acknowledged with 201 may still be only in the Redis
stream. The unpersisted tail is read first, then PostgreSQL (the order matters; see
lua/stream_tail.lua), and the two are merged by transaction id.

Transfer history holds transfers (captures of holds included) and refunds, each in the
history of both parties; deposit history holds deposits.
"""

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Boolean, ColumnElement, Select, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import TRANSFER_KINDS_SQL, LedgerTransaction
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.stream_tail import Tail, unpersisted_tail
from service.redis.types import RedisClient

Direction = Literal["all", "in", "out"]
DIRECTIONS: tuple[Direction, ...] = ("all", "in", "out")
# Transfer history holds transfers (captures included) and refunds, in and out.
TRANSFER_KINDS = ("transfer", "refund")


class HistoryUnavailable(Exception):
    """The writer is so far behind that the unpersisted tail cannot be merged."""


async def complete_tail(redis: RedisClient, tail_max_entries: int, user_id: int) -> Tail:
    """The unpersisted tail of one user, whole; HistoryUnavailable when the writer is so
    far behind that it overflows. Read it before querying PostgreSQL."""
    tail = await unpersisted_tail(redis, keyspace.bucket_of(user_id), tail_max_entries, user_id)
    if tail.overflow:
        raise HistoryUnavailable(f"more than {tail_max_entries} records are not persisted")
    return tail


@dataclass(frozen=True, slots=True)
class Page:
    transactions: list[Transaction]  # newest first
    has_more: bool


def _matches(txn: Transaction, user_id: int, kind: str, direction: Direction) -> bool:
    if kind == "deposit":
        return txn.kind == "deposit" and txn.to_user_id == user_id
    if txn.kind not in TRANSFER_KINDS:
        return False
    incoming = txn.to_user_id == user_id and direction in ("all", "in")
    outgoing = txn.from_user_id == user_id and direction in ("all", "out")
    return incoming or outgoing


def _ledger_query(
    user_id: int, kind: str, direction: Direction, before_id: int | None, limit: int
) -> Select[LedgerTransaction]:
    t = LedgerTransaction

    def newest(*where: ColumnElement[bool]) -> Select[int]:
        query = select(t.id).where(*where)
        if before_id is not None:
            query = query.where(t.id < before_id)
        return query.order_by(t.id.desc()).limit(limit)

    # The kinds as SQL literals, so that the planner matches the partial indexes whatever
    # plan a prepared statement gets.
    transfer_kinds = literal_column(TRANSFER_KINDS_SQL, Boolean)
    if kind == "deposit":
        ids = newest(literal_column("kind = 'deposit'", Boolean), t.to_user_id == user_id)
    elif direction == "in":
        ids = newest(transfer_kinds, t.to_user_id == user_id)
    elif direction == "out":
        # Every transaction with a sender is a transfer or a refund.
        ids = newest(t.from_user_id == user_id)
    else:
        # Two index-ordered scans, each bounded, instead of one OR that sorts everything.
        # Each side is wrapped in a subquery, as LIMIT needs inside a UNION member.
        incoming = newest(transfer_kinds, t.to_user_id == user_id).subquery()
        outgoing = newest(t.from_user_id == user_id).subquery()
        both = union_all(select(incoming.c.id), select(outgoing.c.id)).subquery()
        ids = select(both.c.id).order_by(both.c.id.desc()).limit(limit)
    return select(t).where(t.id.in_(ids.scalar_subquery())).order_by(t.id.desc())


async def read_history(
    redis: RedisClient,
    engine: AsyncEngine,
    *,
    user_id: int,
    kind: Literal["deposit", "transfer"],
    direction: Direction,
    before_id: int | None,
    limit: int,
    tail_max_entries: int,
) -> Page:
    """One page, newest first, of ids below ``before_id``."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    merged = {
        txn.txn_id: txn
        for txn in tail.transactions
        if _matches(txn, user_id, kind, direction) and (before_id is None or txn.txn_id < before_id)
    }
    async with AsyncSession(engine) as session:
        rows = await session.scalars(_ledger_query(user_id, kind, direction, before_id, limit + 1))
        for row in rows:
            merged.setdefault(row.id, Transaction.from_ledger(row))
    newest_first = sorted(merged.values(), key=lambda txn: txn.txn_id, reverse=True)
    return Page(transactions=newest_first[:limit], has_more=len(newest_first) > limit)
