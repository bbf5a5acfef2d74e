"""The refunded totals of transfers (``refunded:{<refunder>}:<txn_id>`` in Redis) as the
ledger has them: for ``wallet rebuild`` (to put them back) and ``wallet reconcile`` (to
compare; docs/holds.md).

A refund within one bucket is a ``transactions`` row of kind refund. A refund across
buckets (lua/refund.lua, docs/scaling.md) counts from its reservation on the refunder's
bucket, where the script raised the total, unless a void undid it (the void lowered the
total again). Both are records of the refunder's bucket, so reconcile counts them as of that
bucket's snapshot (``through``: its counter and stream position). Rebuild also counts a
refund whose credit the ledger holds without its reservation: it makes the reservation
again (service/ledger/rebuild_crossings.py).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import LedgerTransaction
from service.ledger.crossing_totals import VOIDED, C, R, V, through_entry_of
from service.ledger.hold_totals import EntryId
from service.redis import keyspace

T = LedgerTransaction

# A bucket's snapshot: its txn:seq and its stream's last entry id.
Through = tuple[int, EntryId]


@dataclass(frozen=True, slots=True)
class RefundedTotal:
    txn_id: int  # the transfer refunded
    refunder: int  # who refunded it: the key refunded:{<refunder>}:<txn_id>
    refunded_kopecks: int
    transfer_kopecks: int | None  # the transfer's amount; None when the ledger lacks it


def _refunds(through: Through | None) -> Any:
    """One row per refund that counts, ``(refund_of, refunder, amount_kopecks)``: as of
    ``through`` of the refunders' bucket when given."""
    within: tuple[ColumnElement[bool], ...] = (T.kind == "refund", T.refund_of.is_not(None))
    if through is not None:
        within += (T.id <= through[0],)
    arms = [select(T.refund_of, T.from_user_id.label("refunder"), T.amount_kopecks).where(*within)]
    if keyspace.BUCKETS > 1:
        entry = None if through is None else through[1]
        undone = exists().where(V.transfer_id == R.id, VOIDED, *through_entry_of(V, entry))
        across = (R.refund_of.is_not(None), ~undone, *through_entry_of(R, entry))
        arms.append(select(R.refund_of, R.from_user_id, R.amount_kopecks).where(*across))
        if through is None:
            lost = ~exists().where(R.id == C.transfer_id)
            arms.append(
                select(C.refund_of, C.from_user_id, C.amount_kopecks).where(
                    C.refund_of.is_not(None), lost
                )
            )
    return union_all(*arms).subquery("refunds")


def _totals(refunds: Any, txn_ids: list[int]) -> Any:
    """The totals per transfer and refunder, with the transfer's amount: its row, or, for a
    transfer across buckets, its credit (a record of the refunder's bucket)."""
    original = T.__table__.alias("original")
    amount: Any = original.c.amount_kopecks
    query = select(refunds.c.refund_of, refunds.c.refunder, func.sum(refunds.c.amount_kopecks))
    query = query.outerjoin(original, original.c.id == refunds.c.refund_of)
    if keyspace.BUCKETS > 1:
        credit = C.__table__.alias("credit")
        query = query.outerjoin(credit, credit.c.transfer_id == refunds.c.refund_of)
        amount = func.coalesce(amount, credit.c.amount_kopecks)
    return (
        query.add_columns(func.max(amount))
        .where(refunds.c.refund_of.in_(txn_ids))
        .group_by(refunds.c.refund_of, refunds.c.refunder)
        .order_by(refunds.c.refund_of, refunds.c.refunder)
    )


async def _read(
    connection: AsyncConnection, txn_ids: list[int], through: Through | None
) -> list[RefundedTotal]:
    if not txn_ids:
        return []
    rows = await connection.execute(_totals(_refunds(through), txn_ids))
    return [
        RefundedTotal(
            txn_id=int(txn_id),
            refunder=int(refunder),
            refunded_kopecks=int(total),
            transfer_kopecks=None if amount is None else int(amount),
        )
        for txn_id, refunder, total, amount in rows
    ]


async def refunded_totals_page(
    connection: AsyncConnection, after_txn_id: int, limit: int
) -> list[RefundedTotal]:
    """The refunded totals of every refunded transfer, by transfer id, ``limit`` after
    ``after_txn_id`` (keyset; a transfer refunded by two users, which the scripts never
    do, gives two totals and may take more than ``limit``)."""
    refunds = _refunds(None)
    ids = await connection.execute(
        select(refunds.c.refund_of)
        .where(refunds.c.refund_of > after_txn_id)
        .group_by(refunds.c.refund_of)
        .order_by(refunds.c.refund_of)
        .limit(limit)
    )
    return await _read(connection, list(ids.scalars()), None)


async def refunded_totals_of(
    connection: AsyncConnection, pairs: Iterable[tuple[int, int]], through: Through
) -> dict[tuple[int, int], RefundedTotal]:
    """The refunded totals of these ``(refunder, transfer id)`` pairs, all of one bucket, as
    of ``through`` of that bucket; a pair without refunds is left out."""
    wanted = set(pairs)
    txn_ids = sorted({txn_id for _, txn_id in wanted})
    return {
        (total.refunder, total.txn_id): total
        for total in await _read(connection, txn_ids, through)
        if (total.refunder, total.txn_id) in wanted
    }
