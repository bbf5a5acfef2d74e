"""Transaction histories: PostgreSQL merged with what the writer has not persisted yet.

Read-your-writes: a transaction acknowledged with 201 may still be only in the Redis
stream. The unpersisted tail is read first, then PostgreSQL (the order matters; see
lua/stream_tail.lua), and the two are merged by transaction id.

Transfer history holds transfers (captures of holds included) and refunds, each in the
history of both parties, as the viewer's postings (service/domain/postings.py); deposit
history holds deposits. A transfer across buckets is in its payer's history from its
reservation and in its payee's from its credit, each at the instant of that party's side;
one that a void undid moved no money in the end and is left out (the statement shows it
with its reversal).
"""

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Boolean, ColumnElement, Select, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import TRANSFER_KINDS_SQL, LedgerTransaction
from service.domain.postings import Posting, posting_of
from service.domain.transactions import Transaction
from service.ledger import crossing_reads
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
    postings: list[Posting]  # newest first
    has_more: bool


def _matches(posting: Posting, kind: str, direction: Direction) -> bool:
    if kind == "deposit":
        return posting.kind == "deposit"
    if posting.kind not in TRANSFER_KINDS:
        return False
    return direction == "all" or (direction == "in") == posting.incoming


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
    mine = tail.postings(user_id)
    # Reservations whose void is not stored yet: the ledger's query cannot leave them out.
    undone = {posting.txn_id for posting in mine if posting.kind == "reversal"}
    merged = {
        posting.txn_id: posting
        for posting in mine
        if _matches(posting, kind, direction) and (before_id is None or posting.txn_id < before_id)
    }
    async with AsyncSession(engine) as session:
        rows = await session.scalars(_ledger_query(user_id, kind, direction, before_id, limit + 1))
        for row in rows:
            merged.setdefault(row.id, posting_of(Transaction.from_ledger(row), user_id))
        if kind == "transfer":
            for posting in await crossing_reads.transfer_history(
                session,
                user_id,
                incoming=direction != "out",
                outgoing=direction != "in",
                before_id=before_id,
                limit=limit + 1 + len(undone),
            ):
                merged.setdefault(posting.txn_id, posting)
    for txn_id in undone:
        merged.pop(txn_id, None)
    newest_first = sorted(merged.values(), key=lambda posting: posting.txn_id, reverse=True)
    return Page(postings=newest_first[:limit], has_more=len(newest_first) > limit)
