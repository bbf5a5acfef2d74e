"""A user's postings in the ledger (service/domain/postings.py), in time order: the user's
side of each transaction, and of each transfer across buckets (the payer's reservation and
void, the payee's credit, from the tables their writers store them in).

Every read is one statement: a ``UNION ALL`` of one arm per source, each arm an index range
scan ordered by the instant of the user's side and the id, with its own LIMIT
(persistence/models.py, the ``*_time`` indexes), in one shape: the posting's columns.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Select,
    String,
    case,
    literal,
    literal_column,
    null,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.models import (
    TRANSFER_KINDS_SQL,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from service.domain.choices import one_of
from service.domain.postings import Posting
from service.domain.times import datetime_from_us, us_from_datetime
from service.domain.transactions import ITEM_KINDS
from service.ledger.crossing_totals import VOIDED, undone_by_a_void
from service.redis import keyspace

T = LedgerTransaction
R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd

_NO_ID = null().cast(BigInteger)

# (at_us, txn_id) of a posting: a page of history holds what comes before it.
Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Source:
    """One arm: the user's rows of one table and side, as the posting's columns."""

    columns: tuple[Any, ...]  # in the order of _SHAPE
    where: tuple[ColumnElement[bool], ...]
    instant: Any  # the column of the user's side's instant
    id_: Any


_SHAPE = (
    "txn_id",
    "kind",
    "from_user_id",
    "to_user_id",
    "amount_kopecks",
    "at",
    "balance_after_kopecks",
    "hold_id",
    "refund_of",
)


def _transaction_columns(balance_after: Any) -> tuple[Any, ...]:
    return (T.id, T.kind, T.from_user_id, T.to_user_id, T.amount_kopecks, T.created_at,
            balance_after, T.hold_id, T.refund_of)  # fmt: skip


def sources(
    user_id: int, *, deposits: bool, incoming: bool, outgoing: bool, reversals: bool
) -> list[Source]:
    """The sources of the user's postings of these sorts. Without reversals, reservations
    that a void undid are left out too: they moved no money in the end. With one bucket
    there is no transfer across buckets (the count is fixed at creation), and no arm reads
    their tables: a page costs what it did before they existed."""
    found = _transaction_sources(user_id, deposits, incoming, outgoing)
    if keyspace.BUCKETS > 1:
        found += _crossing_sources(user_id, incoming, outgoing, reversals)
    return found


def _transaction_sources(
    user_id: int, deposits: bool, incoming: bool, outgoing: bool
) -> list[Source]:
    # The kinds as SQL literals, so that the planner matches the partial indexes whatever
    # plan a prepared statement gets.
    found = []
    to_side = _transaction_columns(T.to_balance_after_kopecks)
    if deposits:
        kind = literal_column("kind = 'deposit'", Boolean)
        found.append(Source(to_side, (kind, T.to_user_id == user_id), T.created_at, T.id))
    if incoming:
        kinds = literal_column(TRANSFER_KINDS_SQL, Boolean)
        found.append(Source(to_side, (kinds, T.to_user_id == user_id), T.created_at, T.id))
    if outgoing:
        # Every transaction with a sender is a transfer or a refund.
        from_side = _transaction_columns(T.from_balance_after_kopecks)
        found.append(Source(from_side, (T.from_user_id == user_id,), T.created_at, T.id))
    return found


def _crossing_kind(refund_of: Any) -> Any:
    """A side's kind: a refund's names the transfer it refunds."""
    return case((refund_of.is_(None), literal("transfer", String)), else_=literal("refund", String))


def _crossing_sources(
    user_id: int, incoming: bool, outgoing: bool, reversals: bool
) -> list[Source]:
    found = []
    if incoming:
        credit = (C.transfer_id, _crossing_kind(C.refund_of), C.from_user_id, C.to_user_id,
                  C.amount_kopecks, C.credited_at, C.to_balance_after_kopecks, C.hold_id,
                  C.refund_of)  # fmt: skip
        found.append(Source(credit, (C.to_user_id == user_id,), C.credited_at, C.transfer_id))
    if outgoing:
        mine: tuple[ColumnElement[bool], ...] = (R.from_user_id == user_id,)
        if not reversals:
            mine += (~undone_by_a_void(),)
        reservation = (R.id, _crossing_kind(R.refund_of), R.from_user_id, R.to_user_id,
                       R.amount_kopecks, R.created_at, R.from_balance_after_kopecks, R.hold_id,
                       R.refund_of)  # fmt: skip
        found.append(Source(reservation, mine, R.created_at, R.id))
    if reversals:
        # The money back to the payer: from no one, to the payer.
        reversal = (V.transfer_id, literal("reversal", String), _NO_ID, V.from_user_id,
                    V.amount_kopecks, V.at, V.from_balance_after_kopecks, _NO_ID,
                    _NO_ID)  # fmt: skip
        found.append(Source(reversal, (V.from_user_id == user_id, VOIDED), V.at, V.transfer_id))
    return found


def _arm(source: Source, where: tuple[ColumnElement[bool], ...], newest: bool, limit: int) -> Any:
    order = (source.instant.desc(), source.id_.desc()) if newest else (source.instant, source.id_)
    labelled = (column.label(name) for column, name in zip(source.columns, _SHAPE, strict=True))
    query: Select[Any] = select(*labelled).where(*source.where, *where)
    return query.order_by(*order).limit(limit).subquery()


async def _read(
    session: AsyncSession,
    user_id: int,
    arms: list[Any],
) -> list[Posting]:
    if not arms:
        return []
    every = union_all(*(select(arm) for arm in arms))
    return [
        Posting(
            txn_id=row.txn_id,
            kind=one_of(row.kind, ITEM_KINDS, "posting kind"),
            viewer_user_id=user_id,
            from_user_id=row.from_user_id,
            to_user_id=row.to_user_id,
            amount_kopecks=row.amount_kopecks,
            at_us=us_from_datetime(row.at),
            balance_after_kopecks=row.balance_after_kopecks,
            hold_id=row.hold_id,
            refund_of=row.refund_of,
        )
        for row in await session.execute(every)
    ]


async def newest(
    session: AsyncSession, user_id: int, of: list[Source], before: Position | None, limit: int
) -> list[Posting]:
    """Per source, its newest ``limit`` postings before ``before`` (all, without it)."""
    arms = []
    for source in of:
        where: tuple[ColumnElement[bool], ...] = ()
        if before is not None:
            at = literal(datetime_from_us(before[0]), source.instant.type)
            where = (tuple_(source.instant, source.id_) < tuple_(at, before[1]),)
        arms.append(_arm(source, where, newest=True, limit=limit))
    return await _read(session, user_id, arms)


async def credit_of(session: AsyncSession, user_id: int, txn_id: int) -> Posting | None:
    """The user's credit of transfer ``txn_id`` across buckets, if the ledger has one."""
    [credits] = _crossing_sources(user_id, incoming=True, outgoing=False, reversals=False)
    arm = _arm(credits, (C.transfer_id == txn_id,), newest=True, limit=1)
    found = await _read(session, user_id, [arm])
    return found[0] if found else None


async def last_at_or_before(
    session: AsyncSession, user_id: int, of: list[Source], at: datetime
) -> list[Posting]:
    """Per source, its last posting at or before ``at``."""
    arms = [_arm(source, (source.instant <= at,), newest=True, limit=1) for source in of]
    return await _read(session, user_id, arms)


async def in_period(
    session: AsyncSession,
    user_id: int,
    of: list[Source],
    start: datetime,
    end: datetime,
    limit: int,
) -> list[Posting]:
    """Per source, its first ``limit`` postings with ``start <= instant < end``."""
    arms = [
        _arm(source, (source.instant >= start, source.instant < end), newest=False, limit=limit)
        for source in of
    ]
    return await _read(session, user_id, arms)
