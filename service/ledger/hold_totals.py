"""What the ledger says Redis must hold besides balances, for ``wallet rebuild`` (to put it
back) and ``wallet reconcile`` (to compare): the pending holds (a ``holds`` row with no
``hold_events`` row) and the money they keep on each side (docs/holds.md).

Reconcile compares the ledger with one atomic read of Redis: the read names the stream's
last entry id then (``through_entry``), and these queries count only the rows of records
appended up to it (their ``stream_entry_id``), so that a hold voided or expired after the
read (an event with no transaction id) does not count. Stream entry ids are compared as
numbers, ``<ms>-<seq>``.

A hold whose payee is in another bucket (docs/scaling.md, "Holds across buckets") keeps its
payee's headroom as an expectation in the payee's bucket, which Redis alone knows (reconcile
reads it in its snapshot; rebuild makes it again): the payee's incoming counts here only the
holds of payers of its own bucket.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, exists, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import (
    LedgerHold,
    LedgerHoldEvent,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from service.domain.times import us_from_datetime
from service.redis import keyspace

H = LedgerHold
E = LedgerHoldEvent
C = LedgerTransferCredit
T = LedgerTransaction

EntryId = tuple[int, int]


def parse_entry_id(raw: str) -> EntryId:
    """``"<ms>-<seq>"`` as a pair of numbers; ValueError for anything else."""
    ms, _, seq = raw.partition("-")
    if not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream entry id: {raw!r}")
    return int(ms), int(seq)


def at_or_before(column: Any, bound: EntryId) -> ColumnElement[bool]:
    ms = func.split_part(column, "-", 1).cast(BigInteger)
    seq = func.split_part(column, "-", 2).cast(BigInteger)
    return tuple_(ms, seq) <= tuple_(literal(bound[0], BigInteger), literal(bound[1], BigInteger))


def _pending(through_entry: EntryId | None) -> list[ColumnElement[bool]]:
    """A hold with no end (as of ``through_entry``, when given). Without a position (for
    `wallet rebuild`, over a drained ledger), a hold whose capture's credit across buckets
    is stored has ended too, even if the ledger lost the capture's reservation, which
    carries the event (rebuild makes that reservation again: the hold must not come back
    pending and be captured twice). A reconcile, reading as of one bucket's position, waits
    for the event itself: the credit, from another bucket's writer, may come before it."""
    ended = select(E.hold_id).where(E.hold_id == H.id)
    if through_entry is None:
        captured_across = select(C.transfer_id).where(C.hold_id == H.id)
        return [~exists(ended), ~exists(captured_across)]
    return [
        at_or_before(H.stream_entry_id, through_entry),
        ~exists(ended.where(at_or_before(E.stream_entry_id, through_entry))),
    ]


@dataclass(frozen=True, slots=True)
class PendingHold:
    hold_id: int
    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    created_at_us: int
    expires_at_us: int


def _hold(row: Any) -> PendingHold:
    return PendingHold(
        hold_id=row.id,
        from_user_id=row.from_user_id,
        to_user_id=row.to_user_id,
        amount_kopecks=row.amount_kopecks,
        created_at_us=us_from_datetime(row.created_at),
        expires_at_us=us_from_datetime(row.expires_at),
    )


_HOLD_COLUMNS = (H.id, H.from_user_id, H.to_user_id, H.amount_kopecks, H.created_at, H.expires_at)


async def pending_holds_of_payers(
    connection: AsyncConnection, payer_ids: Sequence[int], through_entry: EntryId | None = None
) -> dict[int, list[PendingHold]]:
    """Each payer's pending holds, by id (an empty list for a payer with none)."""
    holds: dict[int, list[PendingHold]] = {user_id: [] for user_id in payer_ids}
    if not payer_ids:
        return holds
    rows = await connection.execute(
        select(*_HOLD_COLUMNS)
        .where(H.from_user_id.in_(payer_ids), *_pending(through_entry))
        .order_by(H.id)
    )
    for row in rows:
        holds[row.from_user_id].append(_hold(row))
    return holds


async def incoming_of_payees(
    connection: AsyncConnection,
    payee_ids: Sequence[int],
    through_entry: EntryId | None = None,
    every_bucket: bool = False,
) -> dict[int, int]:
    """The sum of the pending holds toward each user from payers of its bucket (0 for none);
    ``every_bucket``: from every payer (what a rebuilt incoming_kopecks holds once the
    expectations of holds across buckets are made again)."""
    incoming = dict.fromkeys(payee_ids, 0)
    if not payee_ids:
        return incoming
    same_bucket = H.from_user_id % keyspace.BUCKETS == H.to_user_id % keyspace.BUCKETS
    buckets = [] if every_bucket else [same_bucket]
    rows = await connection.execute(
        select(H.to_user_id, func.sum(H.amount_kopecks))
        .where(H.to_user_id.in_(payee_ids), *buckets, *_pending(through_entry))
        .group_by(H.to_user_id)
    )
    for user_id, total in rows:
        incoming[user_id] = int(total)
    return incoming


async def pending_holds_page(
    connection: AsyncConnection, after_id: int, limit: int
) -> list[PendingHold]:
    """Every pending hold, by id, ``limit`` after ``after_id`` (keyset)."""
    rows = await connection.execute(
        select(*_HOLD_COLUMNS).where(H.id > after_id, *_pending(None)).order_by(H.id).limit(limit)
    )
    return [_hold(row) for row in rows]


async def expired_holds(
    connection: AsyncConnection, hold_ids: Iterable[int], through_entry: EntryId
) -> dict[int, PendingHold]:
    """Those of ``hold_ids`` whose end in the ledger (as of ``through_entry``) is an
    expiry: the holds that holds:due may still list, unswept."""
    ids = sorted(set(hold_ids))
    if not ids:
        return {}
    rows = await connection.execute(
        select(*_HOLD_COLUMNS)
        .join(E, E.hold_id == H.id)
        .where(
            H.id.in_(ids),
            E.event == "expired",
            at_or_before(H.stream_entry_id, through_entry),
            at_or_before(E.stream_entry_id, through_entry),
        )
    )
    return {row.id: _hold(row) for row in rows}


async def last_stream_entry_id(connection: AsyncConnection) -> EntryId | None:
    """The largest stream entry id any ledger row was stored from (None: no rows)."""
    found: list[EntryId] = []
    columns = (
        T.stream_entry_id,
        H.stream_entry_id,
        E.stream_entry_id,
        LedgerTransferReservation.stream_entry_id,
        LedgerTransferCredit.stream_entry_id,
        LedgerTransferEnd.stream_entry_id,
    )
    for column in columns:
        ms = func.split_part(column, "-", 1).cast(BigInteger)
        seq = func.split_part(column, "-", 2).cast(BigInteger)
        row = (
            await connection.execute(select(ms, seq).order_by(ms.desc(), seq.desc()).limit(1))
        ).first()
        if row is not None:
            found.append((int(row[0]), int(row[1])))
    return max(found, default=None)
