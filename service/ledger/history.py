"""Transaction histories: PostgreSQL merged with what the writer has not persisted yet.

Read-your-writes: a transaction acknowledged with 201 may still be only in the Redis
stream. The unpersisted tail is read first, then PostgreSQL (the order matters; see
lua/stream_tail.lua), and the two are merged by transaction id.
"""

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from sqlalchemy import ColumnElement, Select, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import LedgerTransaction
from service.domain.transactions import Transaction
from service.redis.stream_tail import unpersisted_tail

Direction = Literal["all", "in", "out"]
DIRECTIONS: tuple[Direction, ...] = ("all", "in", "out")


class HistoryUnavailable(Exception):
    """The writer is so far behind that the unpersisted tail cannot be merged."""


@dataclass(frozen=True, slots=True)
class Page:
    transactions: list[Transaction]  # newest first
    has_more: bool


def _matches(txn: Transaction, user_id: int, kind: str, direction: Direction) -> bool:
    if txn.kind != kind:
        return False
    if kind == "deposit":
        return txn.to_user_id == user_id
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

    if kind == "deposit":
        ids = newest(t.kind == "deposit", t.to_user_id == user_id)
    elif direction == "in":
        ids = newest(t.kind == "transfer", t.to_user_id == user_id)
    elif direction == "out":
        ids = newest(t.from_user_id == user_id)
    else:
        # Two index-ordered scans, each bounded, instead of one OR that sorts everything.
        # Each side is wrapped in a subquery, as LIMIT needs inside a UNION member.
        incoming = newest(t.kind == "transfer", t.to_user_id == user_id).subquery()
        outgoing = newest(t.from_user_id == user_id).subquery()
        both = union_all(select(incoming.c.id), select(outgoing.c.id)).subquery()
        ids = select(both.c.id).order_by(both.c.id.desc()).limit(limit)
    return select(t).where(t.id.in_(ids.scalar_subquery())).order_by(t.id.desc())


async def read_history(
    redis: Redis,
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
    tail = await unpersisted_tail(redis, tail_max_entries, user_id)
    if tail.overflow:
        raise HistoryUnavailable(f"more than {tail_max_entries} transactions are not persisted")
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
