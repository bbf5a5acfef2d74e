"""A user's postings in the ledger (service/domain/postings.py), in time order: the user's
side of each transaction, and of each transfer across buckets (the payer's reservation and
void, the payee's credit, from the tables their writers store them in). Every read is a few
index range scans, one per source, each ordered by the source's instant of the user's side
and its id (persistence/models.py, the ``*_time`` indexes)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Select, exists, literal, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.models import (
    TRANSFER_KINDS_SQL,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from service.domain.crossings import CrossingRecord
from service.domain.postings import Posting, crossing_posting, posting_of
from service.domain.times import datetime_from_us
from service.domain.transactions import Transaction

T = LedgerTransaction
R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd
_VOIDED = V.outcome == "voided"

# (at_us, txn_id) of a posting: a page of history holds what comes before it.
Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Source:
    query: Select[Any]  # the user's rows
    instant: Any  # the column of the user's side's instant
    id_: Any
    posting: Callable[[Any], Posting]


def _transactions(user_id: int) -> Callable[[Any], Posting]:
    return lambda row: posting_of(Transaction.from_ledger(row), user_id)


def _crossing(table: str) -> Callable[[Any], Posting]:
    def posting(row: Any) -> Posting:
        found = crossing_posting(CrossingRecord.from_ledger(table, row))
        assert found is not None, row  # a settle is never read here
        return found

    return posting


def sources(
    user_id: int, *, deposits: bool, incoming: bool, outgoing: bool, reversals: bool
) -> list[Source]:
    """The sources of the user's postings of these sorts. Without reversals, reservations
    that a void undid are left out too: they moved no money in the end."""
    # The kinds as SQL literals, so that the planner matches the partial indexes whatever
    # plan a prepared statement gets.
    transactions = _transactions(user_id)
    found = []
    if deposits:
        kind = literal_column("kind = 'deposit'", Boolean)
        found.append(Source(select(T).where(kind, T.to_user_id == user_id), T.created_at, T.id,
                            transactions))  # fmt: skip
    if incoming:
        kinds = literal_column(TRANSFER_KINDS_SQL, Boolean)
        found.append(Source(select(T).where(kinds, T.to_user_id == user_id), T.created_at, T.id,
                            transactions))  # fmt: skip
        found.append(Source(select(C).where(C.to_user_id == user_id), C.credited_at,
                            C.transfer_id, _crossing("transfer_credits")))  # fmt: skip
    if outgoing:
        # Every transaction with a sender is a transfer or a refund.
        found.append(Source(select(T).where(T.from_user_id == user_id), T.created_at, T.id,
                            transactions))  # fmt: skip
        undone = exists().where(V.transfer_id == R.id, _VOIDED)
        mine = (R.from_user_id == user_id,) if reversals else (R.from_user_id == user_id, ~undone)
        found.append(Source(select(R).where(*mine), R.created_at, R.id,
                            _crossing("transfer_reservations")))  # fmt: skip
    if reversals:
        found.append(Source(select(V).where(V.from_user_id == user_id, _VOIDED), V.at,
                            V.transfer_id, _crossing("transfer_ends")))  # fmt: skip
    return found


async def newest(
    session: AsyncSession, of: list[Source], before: Position | None, limit: int
) -> list[Posting]:
    """Per source, its newest ``limit`` postings before ``before`` (all, without it)."""
    found: list[Posting] = []
    for source in of:
        query = source.query
        if before is not None:
            at, id_ = literal(datetime_from_us(before[0]), source.instant.type), before[1]
            query = query.where(tuple_(source.instant, source.id_) < tuple_(at, id_))
        query = query.order_by(source.instant.desc(), source.id_.desc()).limit(limit)
        found.extend(source.posting(row) for row in await session.scalars(query))
    return found


async def last_at_or_before(session: AsyncSession, of: list[Source], at: datetime) -> list[Posting]:
    """Per source, its last posting at or before ``at``."""
    found: list[Posting] = []
    for source in of:
        row = await session.scalar(
            source.query.where(source.instant <= at)
            .order_by(source.instant.desc(), source.id_.desc())
            .limit(1)
        )
        if row is not None:
            found.append(source.posting(row))
    return found


async def in_period(
    session: AsyncSession, of: list[Source], start: datetime, end: datetime, limit: int
) -> list[Posting]:
    """Per source, its first ``limit`` postings with ``start <= instant < end``."""
    found: list[Posting] = []
    for source in of:
        query = source.query.where(source.instant >= start, source.instant < end)
        rows = await session.scalars(query.order_by(source.instant, source.id_).limit(limit))
        found.extend(source.posting(row) for row in rows)
    return found
