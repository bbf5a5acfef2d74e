"""``wallet replay --from <transaction id | stream id>``: re-drives the records still retained
in ``txn:stream`` into PostgreSQL.

Idempotent (``ON CONFLICT (id) DO NOTHING``): rows already stored are left as they are, so
replaying a range twice, or while the writer runs, stores every record once. The consumer
group is not touched: nothing is read through it or acknowledged.
"""

import logging
import re
from typing import cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_isolating
from service.domain.transactions import Transaction
from service.ledger.writer import Unparseable, parse_entry
from service.redis.keyspace import TXN_STREAM
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


def _txn_id(fields: dict[bytes, bytes]) -> int | None:
    try:
        return int(fields[b"id"])
    except (KeyError, ValueError):
        return None


async def replay(settings: Settings, redis: Redis, engine: AsyncEngine, from_id: str) -> int:
    """Inserts the retained stream records from ``from_id`` on; returns the rows newly
    inserted. ``from_id`` is a stream entry id (start there) or a transaction id (start at
    the first entry whose transaction id is at least that). Raises ValueError on a
    malformed ``from_id``."""
    start_entry, start_txn = parse_from_id(from_id)
    chunk = settings.writer_batch_size
    cursor = start_entry or "-"
    started = passed_earlier = False
    inserted = scanned = skipped = 0
    while True:
        entries = cast(StreamEntries, await redis.xrange(TXN_STREAM, min=cursor, count=chunk))
        if not entries:
            break
        cursor = "(" + entries[-1][0].decode()
        batch: list[tuple[str, Transaction]] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if start_txn is not None and not started:
                txn_id = _txn_id(fields)
                if txn_id is None or txn_id < start_txn:
                    passed_earlier = passed_earlier or txn_id is not None
                    continue
                started = True
                if txn_id > start_txn and not passed_earlier:
                    logger.warning(
                        "the stream no longer holds transactions %d to %d; replaying from %d",
                        start_txn,
                        txn_id - 1,
                        txn_id,
                    )
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
        if len(entries) < chunk:
            break
    logger.info(
        "replay from %s: %d entries read, %d rows inserted, %d skipped",
        from_id,
        scanned,
        inserted,
        skipped,
    )
    return inserted
