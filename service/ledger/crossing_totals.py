"""What the ledger says of transfers across buckets (docs/scaling.md, "Across buckets"),
for ``wallet reconcile`` (to compare with Redis) and ``wallet rebuild`` (to put it back):
what they did to balances, and the money still in transit.

Each side is a record of one bucket's stream, so reconcile counts it as of that bucket's
snapshot (``through_entry``, hold_totals.py): a payer's reservations and voids as of the
payer's bucket, a payee's credits as of the payee's. A reservation is in transit from the
reservation until its end (a settle after its credit, or a void), both on the payer's
bucket: ``transit:{b}`` in Redis.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Boolean, ColumnElement, Row, exists, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import (
    VOIDED_SQL,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from service.ledger.hold_totals import EntryId, at_or_before, parse_entry_id
from service.redis import keyspace

# As a literal, so that the planner matches the partial index whatever plan a prepared
# statement gets.
VOIDED = literal_column(VOIDED_SQL, Boolean)
R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd


def _through(column: Any, through_entry: EntryId | None) -> list[ColumnElement[bool]]:
    return [] if through_entry is None else [at_or_before(column, through_entry)]


def through_entry_of(model: Any, through_entry: EntryId | None) -> list[ColumnElement[bool]]:
    """The rows of a side's table recorded up to ``through_entry`` (all, without it)."""
    return _through(model.stream_entry_id, through_entry)


async def crossing_balance_changes(
    connection: AsyncConnection, user_ids: Sequence[int], through_entry: EntryId | None = None
) -> dict[int, int]:
    """What transfers across buckets did to each user's balance (0 for none): minus the
    reservations the user made, plus the voids that gave them back, plus the credits the
    user received; as of ``through_entry`` of the users' bucket, when given."""
    changes = dict.fromkeys(user_ids, 0)
    if not user_ids:
        return changes
    # Per side: whose balance it moved, which way, and the rows that count.
    parts: list[tuple[Any, int, Any, Any, tuple[ColumnElement[bool], ...]]] = [
        (R.from_user_id, -1, R.amount_kopecks, R.stream_entry_id, ()),
        (V.from_user_id, 1, V.amount_kopecks, V.stream_entry_id, (VOIDED,)),
        (C.to_user_id, 1, C.amount_kopecks, C.stream_entry_id, ()),
    ]
    for user, sign, amount, entry, where in parts:
        rows = await connection.execute(
            select(user, func.sum(amount))
            .where(user.in_(user_ids), *where, *_through(entry, through_entry))
            .group_by(user)
        )
        for user_id, total in rows:
            changes[cast(int, user_id)] += sign * int(total)
    return changes


def undone_by_a_void() -> Any:
    """Whether a void undid the reservation of the row (a correlated EXISTS)."""
    return exists().where(V.transfer_id == R.id, VOIDED)


def _ended(through_entry: EntryId | None) -> Any:
    """Whether the reservation of the row has an end (as of ``through_entry``)."""
    return exists(
        select(V.transfer_id).where(
            V.transfer_id == R.id, *_through(V.stream_entry_id, through_entry)
        )
    )


async def reservations_in_transit(
    connection: AsyncConnection, after_id: int, limit: int
) -> Sequence[Row[*tuple[Any, ...]]]:
    """Up to ``limit`` reservations with no end and an id above ``after_id``, in id order:
    each row the reservation's columns and ``credited_at``, its credit's instant (None: the
    ledger holds no credit)."""
    rows = await connection.execute(
        select(*R.__table__.columns, C.credited_at)
        .outerjoin(C, C.transfer_id == R.id)
        .where(R.id > after_id, ~_ended(None))
        .order_by(R.id)
        .limit(limit)
    )
    return rows.all()


async def uncredited_legs_and_captures(connection: AsyncConnection) -> dict[int, int]:
    """Per payee, the kopecks of batches' legs and holds' captures with no end and no credit
    in the ledger: what rebuild credits again (service/ledger/rebuild_crossings.py)."""
    credited = exists().where(C.transfer_id == R.id)
    to_credit = or_(R.batch_leg.is_not(None), R.hold_id.is_not(None))
    rows = await connection.execute(
        select(R.to_user_id, func.sum(R.amount_kopecks))
        .where(to_credit, ~_ended(None), ~credited)
        .group_by(R.to_user_id)
    )
    return {int(user_id): int(total) for user_id, total in rows}


class UnevenSide(NamedTuple):
    """A side of a transfer across buckets whose counterpart the ledger lacks: money lost
    or created between the two buckets (a Redis loss that one bucket's writer had stored
    further than the other's), or a bug."""

    txn_id: int
    bucket: int  # whose record it is
    finding: str  # one of UNEVEN_FINDINGS


UNEVEN_FINDINGS = {
    "settled_without_credit": "settled, but its credit is not in the ledger: the payer was"
    " debited and the payee never credited",
    "voided_with_credit": "voided, yet its credit is in the ledger: the money reached both",
    "credit_without_reservation": "credited, but its reservation is not in the ledger: the"
    " payee was credited and the payer never debited",
}


async def uneven_sides(
    connection: AsyncConnection, through: Mapping[int, EntryId] | None = None
) -> list[UnevenSide]:
    """The ends and credits whose counterpart the ledger lacks: a settle needs its credit,
    a void excludes one, a credit needs its reservation; with ``through``, only those of
    bucket b recorded up to ``through[b]``. Each counterpart came before the side in time
    (the credit before the settle, the reservation before the credit), so once the writers
    have stored every bucket's records past that instant, a missing one is missing for
    good. One anti-join per finding: in a healthy ledger it finds only sides in flight."""
    credited = exists().where(C.transfer_id == V.transfer_id)
    reserved = exists().where(R.id == C.transfer_id)
    queries = [
        ("settled_without_credit", V.transfer_id, V.from_user_id, V.stream_entry_id,
         (~VOIDED, ~credited)),
        ("voided_with_credit", V.transfer_id, V.from_user_id, V.stream_entry_id,
         (VOIDED, credited)),
        ("credit_without_reservation", C.transfer_id, C.to_user_id, C.stream_entry_id,
         (~reserved,)),
    ]  # fmt: skip
    found: list[UnevenSide] = []
    for finding, txn_id, user_id, entry, where in queries:
        rows = await connection.execute(select(txn_id, user_id, entry).where(*where))
        for row_id, row_user, row_entry in rows:
            bucket = keyspace.bucket_of(row_user)
            if through is None or parse_entry_id(row_entry) <= through[bucket]:
                found.append(UnevenSide(int(row_id), bucket, finding))
    return sorted(found)


async def in_transit(
    connection: AsyncConnection, bucket: int, through_entry: EntryId | None = None
) -> tuple[int, int]:
    """``(kopecks, reservations)`` the bucket's payers reserved and that had no end (as of
    ``through_entry``, when given): what ``transit:{b}`` holds."""
    row = (
        await connection.execute(
            select(func.coalesce(func.sum(R.amount_kopecks), 0), func.count()).where(
                R.from_user_id % keyspace.BUCKETS == bucket,
                *_through(R.stream_entry_id, through_entry),
                ~_ended(through_entry),
            )
        )
    ).one()
    return int(row[0]), int(row[1])
