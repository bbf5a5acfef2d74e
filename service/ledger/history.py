"""Transaction histories: PostgreSQL merged with what the writer has not persisted yet.

Read-your-writes: a transaction acknowledged with 201 may still be only in the Redis
stream. The unpersisted tail is read first, then PostgreSQL (the order matters; see
lua/stream_tail.lua), and the two are merged by transaction id.

Transfer history holds transfers (captures of holds included) and refunds, each in the
history of both parties, as the viewer's postings (service/domain/postings.py); deposit
history holds deposits. Newest first by the viewer's instant, then id: with several
buckets a user's transactions carry ids of several epochs, so ids alone are not in time
order. A transfer across buckets is in its payer's history from its reservation and in its
payee's from its credit, each at the instant of that party's side; one that a void undid
moved no money in the end and is left out (the statement shows it with its reversal).
"""

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.domain.postings import Posting
from service.ledger import posting_reads
from service.ledger.posting_reads import Position
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

    @property
    def last(self) -> Position:
        """Where the next page starts (before it)."""
        return self.postings[-1].at_us, self.postings[-1].txn_id


def _matches(posting: Posting, kind: str, direction: Direction) -> bool:
    if kind == "deposit":
        return posting.kind == "deposit"
    if posting.kind not in TRANSFER_KINDS:
        return False
    return direction == "all" or (direction == "in") == posting.incoming


def _newest_first(posting: Posting) -> tuple[int, int]:
    return -posting.at_us, -posting.txn_id


async def read_history(
    redis: RedisClient,
    engine: AsyncEngine,
    *,
    user_id: int,
    kind: Literal["deposit", "transfer"],
    direction: Direction,
    before: Position | None,
    limit: int,
    tail_max_entries: int,
) -> Page:
    """One page, newest first, of what comes before ``before`` (from the newest, without)."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    mine = tail.postings(user_id)
    # Reservations whose void is not stored yet: the ledger's query cannot leave them out.
    undone = {posting.txn_id for posting in mine if posting.kind == "reversal"}
    merged = {
        posting.txn_id: posting
        for posting in mine
        if _matches(posting, kind, direction)
        and (before is None or (posting.at_us, posting.txn_id) < before)
    }
    of = posting_reads.sources(
        user_id,
        deposits=kind == "deposit",
        incoming=kind == "transfer" and direction != "out",
        outgoing=kind == "transfer" and direction != "in",
        reversals=False,
    )
    async with AsyncSession(engine) as session:
        newest = await posting_reads.newest(session, user_id, of, before, limit + 1 + len(undone))
        for posting in newest:
            merged.setdefault(posting.txn_id, posting)
    for txn_id in undone:
        merged.pop(txn_id, None)
    newest_first = sorted(merged.values(), key=_newest_first)
    return Page(postings=newest_first[:limit], has_more=len(newest_first) > limit)
