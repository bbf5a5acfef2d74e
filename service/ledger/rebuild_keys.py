"""The idempotency records of ``wallet rebuild`` (service/ledger/rebuild.py): those of the
operations accepted in the last ``idempotency_ttl_s`` seconds, read from the ledger, each
with the fingerprint and reply fields the live script wrote, expiring when the original
would have (``lua/restore_idempotency.lua``): deposits, transfers, batches (one record per
key, for all its legs, whichever table each leg is in), holds made, captures and voids
(under the payee's key), refunds, and transfers and refunds across buckets but those a void
undid (the void forgot their key). The fingerprint is the one the ledger kept
(``idempotency_fingerprint``, from the stream field ``idem_fp``) where the script wrote one,
else it is derived from the row. A record Redis still holds is kept, and of two ledger
records with one key (a key used again after its record was lost) the newer wins.
"""

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Select, literal, or_, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.models import (
    LedgerHold,
    LedgerHoldEvent,
    LedgerTransaction,
    LedgerTransferReservation,
)
from service.domain.times import datetime_from_us, us_from_datetime
from service.domain.transactions import BATCH_FINGERPRINT_PREFIX
from service.ledger.crossing_totals import undone_by_a_void
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

logger = logging.getLogger("wallet.rebuild")

# Ledger rows read a page, records restored a call.
BATCH_SIZE = 1000

H = LedgerHold
E = LedgerHoldEvent
T = LedgerTransaction
R = LedgerTransferReservation


@dataclass(frozen=True, slots=True)
class _Record:
    """One idempotency record to restore: the arguments of restore_idempotency.lua."""

    recorded_at_us: int  # when the live script wrote it (its TTL ran from then)
    order: int  # an id, newest first among records of one instant
    owner: int  # the acting user, whose key it is
    key: str
    kind: str
    fingerprint: str | None  # as the ledger kept it
    facts: tuple[int | str, ...]
    what: str  # for messages
    # Why the ledger's rows cannot be restored as this record (then it is skipped).
    problem: str | None = None

    def call(self, ttl_s: int) -> tuple[list[str], list[str]]:
        args = [
            str(self.owner),
            self.key,
            self.kind,
            str(self.recorded_at_us),
            str(ttl_s),
            self.fingerprint or "",
            *(str(fact) for fact in self.facts),
        ]
        return [keyspace.idempotency(self.owner, self.key)], args


async def restore_idempotency_records(
    redis: RedisClient, engine: AsyncEngine, idempotency_ttl_s: int
) -> tuple[int, int, int]:
    """Newest first over every source (the time the record was written, then the id), so
    that of two records with one key the newer is written and the older finds it there."""
    restore = LuaScript(redis, "restore_idempotency")
    # Redis's clock: the one that stamped created_at and that expires the records.
    seconds, micros = await redis.time()
    cutoff = datetime_from_us(seconds * 1_000_000 + micros) - timedelta(seconds=idempotency_ttl_s)
    restored = kept = skipped = 0
    chunk: list[_Record] = []

    async def flush() -> None:
        nonlocal restored, kept, skipped
        for record in chunk:
            if record.problem is not None:
                skipped += 1
                logger.error(
                    "idempotency key %r of user %d not restored: %s",
                    record.key,
                    record.owner,
                    record.problem,
                )
        sendable = [record for record in chunk if record.problem is None]
        calls = [record.call(idempotency_ttl_s) for record in sendable]
        replies = cast(list[list[bytes]], await restore.call_many(calls)) if calls else []
        for record, reply in zip(sendable, replies, strict=True):
            outcome = reply[0].decode()
            if outcome == "restored":
                restored += 1
            elif outcome == "exists":
                kept += 1
            elif outcome == "fingerprint_mismatch":
                skipped += 1
                logger.error(
                    "idempotency key %r of user %d not restored: the ledger's fingerprint %r"
                    " is none the script could have recorded for %s",
                    record.key,
                    record.owner,
                    record.fingerprint,
                    record.what,
                )
            elif outcome != "expired":
                raise ScriptArgumentRejected(f"restore_idempotency: {outcome} for {record.what}")
        chunk.clear()

    async for record in _newest_first(
        _transaction_records(engine, cutoff),
        _hold_records(engine, cutoff),
        _void_records(engine, cutoff),
        _reservation_records(engine, cutoff),
    ):
        chunk.append(record)
        if len(chunk) >= BATCH_SIZE:
            await flush()
    if chunk:
        await flush()
    return restored, kept, skipped


async def _newest_first(*sources: AsyncIterator[_Record]) -> AsyncIterator[_Record]:
    """Merges sources that are each newest first."""
    heads: list[tuple[_Record, AsyncIterator[_Record]]] = []
    for source in sources:
        first = await anext(source, None)
        if first is not None:
            heads.append((first, source))
    while heads:
        index = max(
            range(len(heads)), key=lambda i: (heads[i][0].recorded_at_us, heads[i][0].order)
        )
        record, source = heads[index]
        yield record
        following = await anext(source, None)
        if following is None:
            heads.pop(index)
        else:
            heads[index] = (following, source)


_BatchId = tuple[int, str, datetime]  # payer, key, instant: the legs of one batch


async def _newest_rows(
    engine: AsyncEngine, query: Select[*tuple[Any, ...]], instant: Any, row_id: Any
) -> AsyncIterator[Sequence[Row[*tuple[Any, ...]]]]:
    """The rows of ``query``, newest first by ``(instant, row_id)``, a page of BATCH_SIZE at a
    time (keyset: each page starts below the last row of the one before)."""
    after: tuple[datetime, int] | None = None
    while True:
        page = query
        if after is not None:
            page = page.where(tuple_(instant, row_id) < tuple_(*after))
        page = page.order_by(instant.desc(), row_id.desc()).limit(BATCH_SIZE)
        async with engine.connect() as connection:
            rows = (await connection.execute(page)).all()
        if not rows:
            return
        yield rows
        after = (getattr(rows[-1], instant.key), getattr(rows[-1], row_id.key))


async def _transaction_records(engine: AsyncEngine, cutoff: datetime) -> AsyncIterator[_Record]:
    """Deposits, transfers, captures, refunds and batches (one record for all the legs),
    newest first, keyset on (created_at, id)."""
    query = select(
        T.id,
        T.kind,
        T.from_user_id,
        T.to_user_id,
        T.amount_kopecks,
        T.created_at,
        T.idempotency_key,
        T.hold_id,
        T.refund_of,
        T.idempotency_fingerprint,
    ).where(T.idempotency_key.is_not(None), T.created_at > cutoff)
    emitted: set[_BatchId] = set()
    async for rows in _newest_rows(engine, query, T.created_at, T.id):
        for record in await _page_records(engine, rows, emitted, False, _transaction_record):
            yield record


async def _page_records(
    engine: AsyncEngine,
    rows: Sequence[Any],
    emitted: set[_BatchId],
    crossing: bool,
    one: Callable[[Any], _Record],
) -> list[_Record]:
    """The records of a page of rows of one table (``crossing``: transfer_reservations), one
    per row but for batches: a batch's legs may be in both tables (those across buckets in
    transfer_reservations), and its one record is given by the table of its first leg.
    ``emitted``: the batches already given, all of one instant (kept between pages)."""
    async with engine.connect() as connection:
        wanted = {_batch_id(row) for row in rows if _is_batch_leg(row)} - emitted
        legs = await _batch_legs(connection, wanted)
    records = []
    for row in rows:
        if emitted and next(iter(emitted))[2] != row.created_at:
            emitted.clear()  # the keyset moved past their instant: they never come again
        if not _is_batch_leg(row):
            records.append(one(row))
            continue
        batch = _batch_id(row)
        if batch not in emitted:
            emitted.add(batch)
            if legs[batch][0].crossing == crossing:
                records.append(_batch_record(row, legs[batch]))
    return records


def _is_batch_leg(row: Any) -> bool:
    """A leg of a batch: its fingerprint says so (a transfer's row has none, a capture's and
    a refund's another)."""
    fingerprint = row.idempotency_fingerprint
    return fingerprint is not None and fingerprint.startswith(BATCH_FINGERPRINT_PREFIX)


def _batch_id(row: Any) -> _BatchId:
    return (cast(int, row.from_user_id), cast(str, row.idempotency_key), row.created_at)


async def _batch_legs(
    connection: AsyncConnection, batches: set[_BatchId]
) -> dict[_BatchId, list[Any]]:
    """Every leg of these batches, in id order (the legs' order), each with ``crossing``:
    whether it is a reservation across buckets."""
    legs: dict[_BatchId, list[Any]] = {batch: [] for batch in batches}
    if not batches:
        return legs
    arms = []
    for model, crossing in ((T, False), (R, True)):
        arms.append(
            select(
                model.id,
                model.from_user_id,
                model.to_user_id,
                model.amount_kopecks,
                model.created_at,
                model.idempotency_key,
                literal(crossing).label("crossing"),
            ).where(
                model.idempotency_fingerprint.like(BATCH_FINGERPRINT_PREFIX + "%"),
                tuple_(model.from_user_id, model.idempotency_key, model.created_at).in_(
                    sorted(batches)
                ),
            )
        )
    every = union_all(*arms).subquery()
    for row in await connection.execute(select(every).order_by(every.c.id)):
        legs[_batch_id(row)].append(row)
    return legs


def _batch_record(row: Any, legs: list[Any]) -> _Record:
    first = legs[0].id if legs else row.id
    facts: list[int | str] = [first, us_from_datetime(row.created_at), len(legs)]
    for leg in legs:
        facts += [leg.to_user_id, leg.amount_kopecks]
    problem = None
    if [leg.id for leg in legs] != list(range(first, first + len(legs))):
        # A batch's legs take consecutive ids: the ledger lacks some of them.
        problem = f"the legs of the batch with transaction {row.id} do not have consecutive ids"
    return _Record(
        recorded_at_us=us_from_datetime(row.created_at),
        order=row.id,
        owner=row.from_user_id,
        key=row.idempotency_key,
        kind="batch",
        fingerprint=row.idempotency_fingerprint,
        facts=tuple(facts),
        what=f"the batch of transactions {first}..{first + len(legs) - 1}",
        problem=problem,
    )


def _transaction_record(row: Any) -> _Record:
    created_at_us = us_from_datetime(row.created_at)
    facts: tuple[int | str, ...]
    if row.kind == "deposit":
        kind, owner = "deposit", row.to_user_id
        facts = (row.id, created_at_us, row.amount_kopecks)
    elif row.kind == "refund":
        kind, owner = "refund", row.from_user_id
        facts = (row.id, created_at_us, row.refund_of, row.amount_kopecks)
    elif row.hold_id is not None:  # a capture: the payee's key
        kind, owner = "capture", row.to_user_id
        facts = (row.id, created_at_us, row.hold_id, row.from_user_id, row.amount_kopecks)
    else:
        kind, owner = "transfer", row.from_user_id
        facts = (row.id, created_at_us, row.to_user_id, row.amount_kopecks)
    return _Record(
        recorded_at_us=created_at_us,
        order=row.id,
        owner=owner,
        key=row.idempotency_key,
        kind=kind,
        fingerprint=row.idempotency_fingerprint,
        facts=facts,
        what=f"transaction {row.id}",
    )


async def _reservation_records(engine: AsyncEngine, cutoff: datetime) -> AsyncIterator[_Record]:
    """Transfers, refunds and batch legs across buckets, under the payer's (the refunder's)
    key, and captures of holds across buckets under the payee's, newest first: as one within
    a bucket records it (lua/transfer.lua, lua/refund.lua, lua/transfer_batch.lua and
    lua/hold_capture.lua, with the fingerprint the ledger kept for a refund, a batch and a
    capture). Not those a void undid, but a batch's legs: the void deleted the record (its
    request never got a 201), so a retry is a new one; a batch's record it keeps (the
    batch's other legs may stand: lua/transfer_void.lua)."""
    kept = or_(~undone_by_a_void(), R.batch_leg.is_not(None))
    query = select(R.id, R.from_user_id, R.to_user_id, R.amount_kopecks, R.created_at,
                   R.idempotency_key, R.refund_of, R.idempotency_fingerprint, R.hold_id).where(
        R.idempotency_key.is_not(None), R.created_at > cutoff, kept
    )  # fmt: skip
    emitted: set[_BatchId] = set()
    async for rows in _newest_rows(engine, query, R.created_at, R.id):
        for record in await _page_records(engine, rows, emitted, True, _reservation_record):
            yield record


def _reservation_record(row: Any) -> _Record:
    created_at_us = us_from_datetime(row.created_at)
    if row.hold_id is not None:  # a capture across buckets: the payee's key
        return _Record(
            recorded_at_us=created_at_us,
            order=row.id,
            owner=row.to_user_id,
            key=row.idempotency_key,
            kind="capture",
            fingerprint=row.idempotency_fingerprint,
            facts=(row.id, created_at_us, row.hold_id, row.from_user_id, row.amount_kopecks),
            what=f"capture {row.id} across buckets",
        )
    if row.refund_of is None:
        kind, fingerprint = "transfer", None
        facts = (row.id, created_at_us, row.to_user_id, row.amount_kopecks)
    else:
        kind, fingerprint = "refund", row.idempotency_fingerprint
        facts = (row.id, created_at_us, row.refund_of, row.amount_kopecks)
    return _payers_record(row, kind, fingerprint, facts, f"{kind} {row.id} across buckets")


async def _hold_records(engine: AsyncEngine, cutoff: datetime) -> AsyncIterator[_Record]:
    """Holds made, under the payer's key, newest first."""
    query = select(
        H.id,
        H.from_user_id,
        H.to_user_id,
        H.amount_kopecks,
        H.created_at,
        H.expires_at,
        H.idempotency_key,
        H.idempotency_fingerprint,
    ).where(H.idempotency_key.is_not(None), H.created_at > cutoff)
    async for rows in _newest_rows(engine, query, H.created_at, H.id):
        for row in rows:
            created_at_us = us_from_datetime(row.created_at)
            facts = (row.id, created_at_us, us_from_datetime(row.expires_at), row.to_user_id,
                     row.amount_kopecks)  # fmt: skip
            yield _payers_record(row, "hold", row.idempotency_fingerprint, facts, f"hold {row.id}")


def _payers_record(
    row: Any, kind: str, fingerprint: str | None, facts: tuple[int | str, ...], what: str
) -> _Record:
    """The record of an operation under its payer's key, written at the row's created_at."""
    return _Record(
        recorded_at_us=us_from_datetime(row.created_at),
        order=row.id,
        owner=row.from_user_id,
        key=row.idempotency_key,
        kind=kind,
        fingerprint=fingerprint,
        facts=facts,
        what=what,
    )


async def _void_records(engine: AsyncEngine, cutoff: datetime) -> AsyncIterator[_Record]:
    """Voids, under the payee's key, newest first by the void's instant. (A capture's key
    is its transaction's; an expiry has none.) A void whose hold is not in the ledger names
    no payee and is left out."""
    query = (
        select(
            E.hold_id,
            E.at,
            E.idempotency_key,
            E.idempotency_fingerprint,
            H.from_user_id,
            H.to_user_id,
            H.amount_kopecks,
            H.created_at,
            H.expires_at,
        )
        .join(H, H.id == E.hold_id)
        .where(E.event == "voided", E.idempotency_key.is_not(None), E.at > cutoff)
    )
    async for rows in _newest_rows(engine, query, E.at, E.hold_id):
        for row in rows:
            yield _Record(
                recorded_at_us=us_from_datetime(row.at),
                order=row.hold_id,
                owner=row.to_user_id,
                key=row.idempotency_key,
                kind="void",
                fingerprint=row.idempotency_fingerprint,
                facts=(
                    row.hold_id,
                    row.from_user_id,
                    row.amount_kopecks,
                    us_from_datetime(row.created_at),
                    us_from_datetime(row.expires_at),
                ),
                what=f"the void of hold {row.hold_id}",
            )
