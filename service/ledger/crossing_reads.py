"""The sides of transfers across buckets in a user's reads, from the tables their writers
store them in (persistence/models.py): the user's reservations (transfers out), credits
(transfers in) and voids (reversals), each as the user's posting (service/domain/postings.py),
at the instant of the user's own side."""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from persistence.models import LedgerTransferCredit, LedgerTransferEnd, LedgerTransferReservation
from service.domain.crossings import CrossingRecord
from service.domain.postings import Posting, crossing_posting

R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd
_VOIDED = V.outcome == "voided"


def _posting(table: str) -> Callable[[Any], Posting]:
    def posting(row: Any) -> Posting:
        found = crossing_posting(CrossingRecord.from_ledger(table, row))
        assert found is not None, row  # a settle is never read here
        return found

    return posting


_out = _posting("transfer_reservations")
_in = _posting("transfer_credits")
_reversal = _posting("transfer_ends")


def _by_time(user_id: int) -> list[tuple[Select[Any], Any, Any, Any]]:
    """Per side: its query of the user's rows, its instant, its id, and its posting."""
    return [
        (select(R).where(R.from_user_id == user_id), R.created_at, R.id, _out),
        (select(C).where(C.to_user_id == user_id), C.credited_at, C.transfer_id, _in),
        (select(V).where(V.from_user_id == user_id, _VOIDED), V.at, V.transfer_id, _reversal),
    ]


async def last_at_or_before(session: AsyncSession, user_id: int, at: datetime) -> list[Posting]:
    """The user's last posting of each side at or before ``at`` (the top of an index range
    scan each: transfer_*_by_*_time)."""
    found: list[Posting] = []
    for query, instant, id_, posting in _by_time(user_id):
        row = await session.scalar(
            query.where(instant <= at).order_by(instant.desc(), id_.desc()).limit(1)
        )
        if row is not None:
            found.append(posting(row))
    return found


async def in_period(
    session: AsyncSession, user_id: int, start: datetime, end: datetime, limit: int
) -> list[Posting]:
    """The user's postings with ``start <= instant < end``, at most ``limit`` per side,
    oldest first per side."""
    found: list[Posting] = []
    for query, instant, id_, posting in _by_time(user_id):
        rows = await session.scalars(
            query.where(instant >= start, instant < end).order_by(instant, id_).limit(limit)
        )
        found.extend(posting(row) for row in rows)
    return found


async def transfer_history(
    session: AsyncSession,
    user_id: int,
    incoming: bool,
    outgoing: bool,
    before_id: int | None,
    limit: int,
) -> list[Posting]:
    """The user's transfers across buckets, newest (largest id) first, at most ``limit`` per
    direction: received (credits) and sent (reservations that no void undid: those moved
    no money in the end, and the statement shows them with their reversal)."""
    sides: list[tuple[Select[Any], Any, Any]] = []
    if incoming:
        sides.append((select(C).where(C.to_user_id == user_id), C.transfer_id, _in))
    if outgoing:
        undone: ColumnElement[bool] = exists().where(V.transfer_id == R.id, _VOIDED)
        sides.append((select(R).where(R.from_user_id == user_id, ~undone), R.id, _out))
    found: list[Posting] = []
    for query, id_, posting in sides:
        if before_id is not None:
            query = query.where(id_ < before_id)
        rows = await session.scalars(query.order_by(id_.desc()).limit(limit))
        found.extend(posting(row) for row in rows)
    return found
