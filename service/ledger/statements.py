"""Past balances and statements: the ledger merged with the unpersisted stream tail
(read-your-writes), in time order.

A user's balance at an instant T is their balance right after their last transaction with
``created_at <= T`` (every transaction carries both parties' balances after it), 0 before
any. Transactions are put in time order by ``(created_at, id)``: the scripts stamp them
with Redis's clock and the ids of one script (a batch's legs) share an instant. Holds move
no posted money (held money stays in the balance) until captured, and a capture is a
transfer, so transactions are all there is to a balance.

As for histories, the tail is read before PostgreSQL (lua/stream_tail.lua).
"""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import LedgerTransaction
from service.domain.times import datetime_from_us
from service.domain.transactions import Transaction
from service.ledger.history import complete_tail
from service.redis.types import RedisClient

T = LedgerTransaction


@dataclass(frozen=True, slots=True)
class Statement:
    opening_balance_kopecks: int
    closing_balance_kopecks: int
    transactions: list[Transaction]  # oldest first, from_us <= created_at < to_us


class StatementTooLarge(Exception):
    """The period holds more transactions than a statement may list."""


def _time_order(txn: Transaction) -> tuple[int, int]:
    return txn.created_at_us, txn.txn_id


async def _balance_at(
    session: AsyncSession, tail: list[Transaction], user_id: int, at_us: int
) -> int:
    """The balance after the user's last transaction at or before ``at_us``, among the
    ledger's and ``tail``'s (the user's unpersisted transactions)."""
    candidates = [txn for txn in tail if txn.created_at_us <= at_us]
    # One row per side, each the top of an index range scan (transactions_by_*_time).
    at = datetime_from_us(at_us)
    for side in (T.to_user_id, T.from_user_id):
        row = await session.scalar(
            select(T)
            .where(side == user_id, T.created_at <= at)
            .order_by(T.created_at.desc(), T.id.desc())
            .limit(1)
        )
        if row is not None:
            candidates.append(Transaction.from_ledger(row))
    if not candidates:
        return 0
    return max(candidates, key=_time_order).balance_after_kopecks(user_id)


async def balance_at(
    redis: RedisClient, engine: AsyncEngine, *, user_id: int, at_us: int, tail_max_entries: int
) -> int:
    """The user's balance right after their last transaction with created_at <= at_us (0
    before any). Raises HistoryUnavailable when the tail overflows."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    async with AsyncSession(engine) as session:
        return await _balance_at(session, tail.transactions, user_id, at_us)


async def read_statement(
    redis: RedisClient,
    engine: AsyncEngine,
    *,
    user_id: int,
    from_us: int,
    to_us: int,
    max_items: int,
    tail_max_entries: int,
) -> Statement:
    """The user's transactions with from_us <= created_at < to_us, oldest first, with the
    balance just before (at from_us - 1) and after them. Raises StatementTooLarge beyond
    ``max_items``, HistoryUnavailable when the tail overflows.

    The ledger is read in one snapshot (REPEATABLE READ), so the opening balance and the
    items agree with each other."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    mine = tail.transactions
    start, end = datetime_from_us(from_us), datetime_from_us(to_us)
    merged = {txn.txn_id: txn for txn in mine if from_us <= txn.created_at_us < to_us}
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="REPEATABLE READ")
        async with AsyncSession(bind=connection) as session:
            opening = await _balance_at(session, mine, user_id, from_us - 1)
            # Each side an index range scan (transactions_by_*_time), at most one row more
            # than a statement may hold.
            for side in (T.to_user_id, T.from_user_id):
                rows = await session.scalars(
                    select(T)
                    .where(side == user_id, T.created_at >= start, T.created_at < end)
                    .order_by(T.created_at, T.id)
                    .limit(max_items + 1)
                )
                for row in rows:
                    merged.setdefault(row.id, Transaction.from_ledger(row))
    if len(merged) > max_items:
        raise StatementTooLarge(f"more than {max_items} transactions in the period")
    items = sorted(merged.values(), key=_time_order)
    closing = items[-1].balance_after_kopecks(user_id) if items else opening
    return Statement(
        opening_balance_kopecks=opening, closing_balance_kopecks=closing, transactions=items
    )
