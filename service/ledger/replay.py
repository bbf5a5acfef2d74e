"""``wallet replay --from <transaction id | stream id>``: re-drives the records still retained
in ``txn:stream`` into PostgreSQL.

Idempotent (``ON CONFLICT DO NOTHING`` on the transaction or hold id): rows already stored
are left as they are, so replaying a range twice, or while the writer runs, stores every
record once; transactions and hold records alike (docs/holds.md). The consumer
group is not touched: nothing is read through it or acknowledged.
"""

import logging
import re
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_isolating
from service.domain.records import StreamRecord
from service.ledger.writer import Unparseable, parse_entry
from service.redis import keyspace
from service.redis.types import RedisClient
from service.settings import Settings

logger = logging.getLogger("wallet.replay")

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_TXN_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_STREAM_ID_PART = 2**64 - 1
_MAX_TXN_ID = 2**63 - 1

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def parse_from_id(from_id: str) -> tuple[str | None, int | None]:
    """``"1700000000000-0"`` -> ``("1700000000000-0", None)``; ``"42"`` -> ``(None, 42)``."""
    stream_match = _STREAM_ID.fullmatch(from_id)
    if stream_match and all(int(part) <= _MAX_STREAM_ID_PART for part in stream_match.groups()):
        return from_id, None
    if _TXN_ID.fullmatch(from_id) and int(from_id) <= _MAX_TXN_ID:
        return None, int(from_id)
    raise ValueError(
        f"--from must be a transaction id (a positive integer such as 42) or a stream entry"
        f" id (<milliseconds>-<sequence>, such as 1700000000000-0), not {from_id!r}"
    )


# Entries whose script takes no id from this bucket's counter: a hold's void or expiry, and
# the sides of a transfer across buckets but its reservation (a credit carries the id of the
# payer's bucket, a settle or a void its reservation's older id).
_TAKING_NO_ID = (b"hold_voided", b"hold_expired", b"transfer_in", b"transfer_settled",
                 b"transfer_voided")  # fmt: skip


def _txn_id(fields: dict[bytes, bytes]) -> int | None:
    """The id the entry's script took from the counter: a transaction's id, a new hold's
    (ids of holds and transactions come from one counter, docs/holds.md), or a
    reservation's. None for an entry that takes no id, and for a malformed entry."""
    if _takes_no_id(fields):
        return None
    try:
        if fields.get(b"kind") == b"hold_created":
            return int(fields[b"hold"])
        return int(fields[b"id"])
    except (KeyError, ValueError):
        return None


def _takes_no_id(fields: dict[bytes, bytes]) -> bool:
    return fields.get(b"kind") in _TAKING_NO_ID


async def replay(
    settings: Settings, redis: RedisClient, engine: AsyncEngine, bucket: int, from_id: str
) -> int:
    """Inserts the retained records of the bucket's stream from ``from_id`` on; returns the
    rows newly inserted. ``from_id`` is a stream entry id (start there) or a transaction id
    (start at the first entry whose transaction or hold id is at least that, and the voids
    and expiries of holds just before it that came after the last id below it). Raises
    ValueError on a malformed ``from_id``."""
    start_entry, start_txn = parse_from_id(from_id)
    stream = keyspace.txn_stream(bucket)
    chunk = settings.writer_batch_size
    cursor = start_entry or "-"
    started = passed_earlier = False
    # Entries with no id of their own (voids and expiries of holds, the later sides of
    # transfers across buckets) seen since the last id below the start.
    idless: list[tuple[bytes, dict[bytes, bytes]]] = []
    inserted = scanned = skipped = 0

    async def store(todo: StreamEntries) -> None:
        nonlocal inserted, scanned, skipped
        batch: list[tuple[str, StreamRecord]] = []
        for raw_id, fields in todo:
            entry_id = raw_id.decode()
            scanned += 1
            try:
                batch.append((entry_id, parse_entry(fields)))
            except Unparseable as error:
                skipped += 1
                logger.warning("skipping stream entry %s: %s", entry_id, error)
        if batch:
            added, refused = await insert_isolating(engine, batch)
            inserted += added
            skipped += len(refused)
            for entry_id, reason in refused:
                logger.warning("skipping stream entry %s: %s", entry_id, reason)

    while True:
        entries = cast(StreamEntries, await redis.xrange(stream, min=cursor, count=chunk))
        if not entries:
            break
        cursor = "(" + entries[-1][0].decode()
        todo: StreamEntries = []
        for raw_id, fields in entries:
            if start_txn is not None and not started:
                txn_id = _txn_id(fields)
                if txn_id is None and _takes_no_id(fields):
                    # A void or an expiry after the last id below the start: it may belong
                    # to the range, so it is replayed with it (twice is harmless).
                    idless.append((raw_id, fields))
                    continue
                if txn_id is None or txn_id < start_txn:
                    passed_earlier = passed_earlier or txn_id is not None
                    idless.clear()
                    continue
                started = True
                if txn_id > start_txn and not passed_earlier:
                    logger.warning(
                        "the stream no longer holds transactions %d to %d; replaying from %d",
                        start_txn,
                        txn_id - 1,
                        txn_id,
                    )
                todo += idless
            todo.append((raw_id, fields))
        await store(todo)
        if len(entries) < chunk:
            break
    if not started and idless:
        await store(idless)  # voids and expiries after the last id issued
    logger.info(
        "replay of %s from %s: %d entries read, %d rows inserted, %d skipped",
        stream,
        from_id,
        scanned,
        inserted,
        skipped,
    )
    return inserted
