"""Holds as their parties read them: one by id, and a user's list, newest first.

A hold lives in Redis (``hold:<id>``) while it is pending and for ``hold_retention_s`` after
it ended; the ledger keeps it for ever (``holds`` and its end in ``hold_events``). Between
the two, the unpersisted stream tail holds what the writer has not stored yet: a hold's
creation, its void or expiry, its capture (a transfer with ``hold_id``). Reads merge the
ledger with the tail (read-your-writes); the tail is read before PostgreSQL
(lua/stream_tail.lua).

Statuses are as recorded; a reader derives the status at an instant with
``Hold.status_at`` (pending and past ``expires_at`` is expired), and so does the status
filter of ``list_holds``.
"""

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    any_,
    bindparam,
    literal,
    not_,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from persistence.models import LedgerHold, LedgerHoldEvent
from service.domain.crossings import CrossingRecord
from service.domain.holds import Hold, HoldEvent, Status
from service.domain.times import datetime_from_us
from service.domain.transactions import Transaction
from service.ledger.history import HistoryUnavailable, complete_tail
from service.redis import keyspace
from service.redis.stream_tail import Tail, unpersisted_tail
from service.redis.types import RedisClient

Role = Literal["payer", "payee"]
H = LedgerHold
E = LedgerHoldEvent


@dataclass(frozen=True, slots=True)
class HoldPage:
    holds: list[Hold]  # newest first (by instant, then id)
    has_more: bool


# The ledger.


async def _stored_holds(session: AsyncSession, hold_ids: Iterable[int]) -> dict[int, Hold]:
    """The ledger's holds with these ids, each with its end if it has one."""
    ids = sorted(set(hold_ids))
    if not ids:
        return {}
    rows = await session.execute(
        select(H, E).outerjoin(E, E.hold_id == H.id).where(H.id == any_(_id_array(ids)))
    )
    return {hold.id: Hold.from_ledger(hold, end) for hold, end in rows}


def _id_array(ids: Sequence[int]) -> Any:
    return bindparam(None, list(ids), type_=postgresql.ARRAY(BigInteger()))


def _status_filter(status: Status | None, now: datetime) -> list[ColumnElement[bool]]:
    """The SQL form of ``Hold.status_at(now) == status`` over ``holds`` outer-joined with
    ``hold_events``."""
    if status is None:
        return []
    if status == "pending":
        return [E.hold_id.is_(None), H.expires_at > now]
    if status == "expired":
        return [or_(E.event == "expired", and_(E.hold_id.is_(None), H.expires_at <= now))]
    return [E.event == status]


# The tail.


def _tail_holds(tail: Tail) -> tuple[dict[int, Hold], dict[int, tuple[Any, int, int | None]]]:
    """The holds created in the tail (pending, as created), and the ends the tail records:
    hold id -> (event, amount, capture transaction id)."""
    created: dict[int, Hold] = {}
    ends: dict[int, tuple[Any, int, int | None]] = {}
    for record in tail.records:
        if isinstance(record, Transaction | CrossingRecord):
            # A capture: a transaction with hold_id, or across buckets its reservation.
            if record.hold_id is not None and record.kind in ("transfer", "transfer_out"):
                ends[record.hold_id] = ("captured", record.amount_kopecks, record.txn_id)
        elif not isinstance(record, HoldEvent):
            continue
        elif record.kind == "hold_created":
            if record.at_us < record.expires_at_us:  # else the writer dead-letters it
                created[record.hold_id] = _created(record)
        else:
            event = "voided" if record.kind == "hold_voided" else "expired"
            ends.setdefault(record.hold_id, (event, record.amount_kopecks, None))
    return created, ends


def _created(event: HoldEvent) -> Hold:
    return Hold(
        hold_id=event.hold_id,
        from_user_id=event.from_user_id,
        to_user_id=event.to_user_id,
        amount_kopecks=event.amount_kopecks,
        status="pending",
        captured_amount_kopecks=0,
        created_at_us=event.at_us,
        expires_at_us=event.expires_at_us,
        capture_txn_id=None,
    )


def _touched(tail: Tail) -> set[int]:
    """The ids of the holds the tail says anything about."""
    created, ends = _tail_holds(tail)
    return set(created) | set(ends)


def _merged(stored: dict[int, Hold], tail: Tail) -> dict[int, Hold]:
    """The ledger's holds brought up to date with the tail, and the tail's new holds. A
    hold ends once: an end stored in the ledger is the one the tail holds too, or a later
    view of the same hold, so it is kept."""
    created, ends = _tail_holds(tail)
    holds = dict(created)
    holds.update(stored)
    for hold_id, (event, amount, txn_id) in ends.items():
        hold = holds.get(hold_id)
        if hold is not None and hold.status == "pending":
            holds[hold_id] = hold.ended(event, amount, txn_id)
    return holds


# Reads.


async def read_hold(
    redis: RedisClient, engine: AsyncEngine, hold_id: int, bucket: int, *, tail_max_entries: int
) -> Hold | None:
    """The hold with this id, in ``bucket`` (its payer's, which its id names), with its
    status as recorded (``status_at`` gives it at an instant); None if there is none (the
    caller tells whether the reader is a party).

    Redis's ``hold:<id>`` first. Without it, the ledger: a hold that has ended there is
    final. Otherwise the tail (of the hold's payer, when the ledger knows the hold) and the
    ledger again: what the writer stored after the tail was read was committed before, so
    the second query sees it. Raises HistoryUnavailable when the tail overflows.
    """
    if hold_id < 1:
        return None
    raw = cast(dict[bytes, bytes], await redis.hgetall(keyspace.hold(bucket, hold_id)))
    if raw:
        return Hold.from_redis_hash(hold_id, raw)
    async with AsyncSession(engine) as session:
        stored = await _stored_holds(session, [hold_id])
    known = stored.get(hold_id)
    if known is not None and known.status != "pending":
        return known
    payer = None if known is None else known.from_user_id
    tail = await unpersisted_tail(redis, bucket, tail_max_entries, payer)
    async with AsyncSession(engine) as session:
        stored = await _stored_holds(session, [hold_id])
    hold = _merged(stored, tail).get(hold_id)
    if tail.overflow and (hold is None or hold.status == "pending"):
        raise HistoryUnavailable(f"more than {tail_max_entries} records are not persisted")
    return hold


async def _tails_of(
    redis: RedisClient, tail_max_entries: int, user_id: int, role: Role | None
) -> Tail:
    """The unpersisted records of the user's holds: the user's bucket's tail and, with more
    than one bucket and the user as a payee, those of the holds toward the user in the
    others' (a hold lives in its payer's bucket): one read per bucket."""
    tail = await complete_tail(redis, tail_max_entries, user_id)
    others = [b for b in keyspace.all_buckets() if b != keyspace.bucket_of(user_id)]
    if not others or role == "payer":
        return tail
    tails = await asyncio.gather(
        *(unpersisted_tail(redis, b, tail_max_entries, user_id) for b in others)
    )
    if any(other.overflow for other in tails):
        raise HistoryUnavailable(f"more than {tail_max_entries} records are not persisted")
    records = [*tail.records, *(record for other in tails for record in other.records)]
    return Tail(records=records, overflow=False)


def _has_role(hold: Hold, user_id: int, role: Role | None) -> bool:
    payer, payee = hold.from_user_id == user_id, hold.to_user_id == user_id
    return payer if role == "payer" else payee if role == "payee" else payer or payee


async def list_holds(
    redis: RedisClient,
    engine: AsyncEngine,
    *,
    user_id: int,
    status: Status | None,
    role: Role | None,
    before: tuple[int, int] | None,
    limit: int,
    now_us: int,
    tail_max_entries: int,
) -> HoldPage:
    """The user's holds as payer, payee or either (``role`` None), with the status
    ``status`` at ``now_us`` (any, if None) and made before ``before`` (``(created_at_us,
    hold_id)``, the last of the previous page): one page, newest first, by instant then id
    (ids follow time only within a bucket). Raises HistoryUnavailable when the tail
    overflows.

    The tail may change what the ledger says of a hold (a hold pending in PostgreSQL may be
    captured in the tail) or add holds. So the holds the tail mentions are read from the
    ledger by id, brought up to date and filtered here; the ledger's page query leaves them
    out and filters the rest in SQL, where their status is final for the read. Both parts
    are exact, so the first ``limit`` of their union is the page, and one more tells
    whether there are more.
    """
    tail = await _tails_of(redis, tail_max_entries, user_id, role)
    touched = _touched(tail)
    now = datetime_from_us(now_us)
    async with AsyncSession(engine) as session:
        stored = await _stored_holds(session, touched)
        holds = {
            hold.hold_id: hold
            for hold in _merged(stored, tail).values()
            if _has_role(hold, user_id, role)
            and (before is None or _position(hold) < before)
            and (status is None or hold.status_at(now_us) == status)
        }
        # Newest first per side, each an index scan (holds_by_payer, holds_by_payee, by
        # instant and id) that stops after limit + 1 matches.
        sides = [H.from_user_id, H.to_user_id]
        if role is not None:
            sides = [H.from_user_id if role == "payer" else H.to_user_id]
        where = [*_status_filter(status, now), not_(H.id == any_(_id_array(sorted(touched))))]
        if before is not None:
            at = literal(datetime_from_us(before[0]), H.created_at.type)
            where.append(tuple_(H.created_at, H.id) < tuple_(at, literal(before[1])))
        pages = [
            select(H.id, H.created_at)
            .outerjoin(E, E.hold_id == H.id)
            .where(side == user_id, *where)
            .order_by(H.created_at.desc(), H.id.desc())
            .limit(limit + 1)
            .subquery()
            for side in sides
        ]
        both = union_all(*(select(page.c.id, page.c.created_at) for page in pages)).subquery()
        newest = both.c.created_at.desc(), both.c.id.desc()
        ids = select(both.c.id).order_by(*newest).limit(limit + 1)
        rows = await session.execute(
            select(H, E).outerjoin(E, E.hold_id == H.id).where(H.id.in_(ids.scalar_subquery()))
        )
        for hold, end in rows:
            holds.setdefault(hold.id, Hold.from_ledger(hold, end))
    newest_first = sorted(holds.values(), key=_position, reverse=True)
    return HoldPage(holds=newest_first[:limit], has_more=len(newest_first) > limit)


def _position(hold: Hold) -> tuple[int, int]:
    """Where a hold is in a list: by instant, then id."""
    return hold.created_at_us, hold.hold_id
