"""Past balances and statements: the ledger merged with the unpersisted stream tail
(read-your-writes), in time order.

They list the user's postings (service/domain/postings.py): the user's side of every
transaction, at the instant the user's balance moved, with that balance after it. A
user's balance at an instant T is their balance right after their last posting at or
before T, 0 before any. Postings are put in time order by ``(instant, id)``: the scripts
stamp them with the clock of the user's bucket, strictly past its last stamp, and the ids
of one script (a batch's legs) share an instant. Holds move no posted money (held money
stays in the balance) until captured, and a capture is a transfer; a transfer across
buckets is the payer's reservation (and, if a void undid it, its reversal) and the
payee's credit (service/ledger/posting_reads.py).

As for histories, the tail is read before PostgreSQL (lua/stream_tail.lua).
"""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.domain.postings import Posting
from service.domain.times import datetime_from_us
from service.ledger import posting_reads
from service.ledger.history import complete_tail
from service.redis.types import RedisClient


@dataclass(frozen=True, slots=True)
class Statement:
    opening_balance_kopecks: int
    closing_balance_kopecks: int
    postings: list[Posting]  # oldest first, from_us <= at_us < to_us

    def __post_init__(self) -> None:
        signed_kopecks = sum(posting.signed_kopecks for posting in self.postings)
        # The contract's promise: opening + the signed amounts = closing, exactly.
        assert self.opening_balance_kopecks + signed_kopecks == self.closing_balance_kopecks


class StatementTooLarge(Exception):
    """The period holds more postings than a statement may list."""


def _everything(user_id: int) -> list[posting_reads.Source]:
    return posting_reads.sources(
        user_id, deposits=True, incoming=True, outgoing=True, reversals=True
    )


async def _balance_at(session: AsyncSession, tail: list[Posting], user_id: int, at_us: int) -> int:
    """The balance after the user's last posting at or before ``at_us``, among the
    ledger's and ``tail``'s (the user's unpersisted postings)."""
    candidates = [posting for posting in tail if posting.at_us <= at_us]
    at = datetime_from_us(at_us)
    candidates += await posting_reads.last_at_or_before(session, user_id, _everything(user_id), at)
    if not candidates:
        return 0
    return max(candidates, key=Posting.time_order).balance_after_kopecks


async def balance_at(
    redis: RedisClient, engine: AsyncEngine, *, user_id: int, at_us: int, tail_max_entries: int
) -> int:
    """The user's balance right after their last posting at or before at_us (0 before
    any). Raises HistoryUnavailable when the tail overflows."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    async with AsyncSession(engine) as session:
        return await _balance_at(session, tail.postings(user_id), user_id, at_us)


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
    """The user's postings with from_us <= instant < to_us, oldest first, with the
    balance just before (at from_us - 1) and after them. Raises StatementTooLarge beyond
    ``max_items``, HistoryUnavailable when the tail overflows.

    The ledger is read in one snapshot (REPEATABLE READ), so the opening balance and the
    items agree with each other."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    mine = tail.postings(user_id)
    start, end = datetime_from_us(from_us), datetime_from_us(to_us)
    # A transfer undone by a void and its reversal share an id.
    merged = {
        (posting.txn_id, posting.kind): posting
        for posting in mine
        if from_us <= posting.at_us < to_us
    }
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="REPEATABLE READ")
        async with AsyncSession(bind=connection) as session:
            opening = await _balance_at(session, mine, user_id, from_us - 1)
            for posting in await posting_reads.in_period(
                session, user_id, _everything(user_id), start, end, max_items + 1
            ):
                merged.setdefault((posting.txn_id, posting.kind), posting)
    if len(merged) > max_items:
        raise StatementTooLarge(f"more than {max_items} postings in the period")
    items = sorted(merged.values(), key=Posting.time_order)
    closing = items[-1].balance_after_kopecks if items else opening
    return Statement(
        opening_balance_kopecks=opening, closing_balance_kopecks=closing, postings=items
    )
