"""The ledger writer: drains a bucket's ``txn:stream:{b<bucket>}`` Redis stream into
PostgreSQL (one StreamWriter per bucket; run_writer_and_sweeper runs one for every bucket).

Delivery is at least once and storage exactly once. Entries are read through the consumer
group ``ledger-writer``; a batch is written in one PostgreSQL transaction with ``ON CONFLICT
(id) DO NOTHING`` and acknowledged (XACK) only after COMMIT. A writer killed anywhere
leaves its entries pending: the same consumer name re-reads them at start (XREADGROUP from
id 0), another writer claims them once they have been idle ``writer_claim_idle_ms``
(XAUTOCLAIM). Writing them twice stores them once.

A record that cannot be parsed, or that PostgreSQL refuses for a data reason, is copied to
the bucket's ``txn:dead-letter`` stream with its entry id, its fields and the reason, logged, and
acknowledged in the same atomic step. When PostgreSQL or Redis cannot be reached the batch
in hand is retried with exponential backoff and nothing is acknowledged; any other error is
a bug, and the writer stops with it (service/outages.py).

Acknowledged entries stay in the stream for ``stream_retention_s`` (for ``wallet replay``)
and are then trimmed; an entry not yet acknowledged is never trimmed. See docs/ledger.md.

With WALLET_REDIS_MIN_REPLICAS=N, each read of the stream is followed, on the same
connection, by the WAIT and WAITAOF the money calls use (service/redis/replicas.py): the
writer stores only entries that N replicas have, so a failover never leaves the ledger
with a transaction the new primary lacks (one whose request was answered outcome_unknown,
and whose retry would then be applied again). Entries read without that confirmation are
read again (they are this consumer's pending entries) once it comes.
"""

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_isolating, ledger_row_count
from service.domain.holds import HoldEvent
from service.domain.records import StreamRecord, record_from_stream_fields
from service.domain.times import datetime_from_us
from service.domain.transactions import Transaction
from service.outages import is_outage
from service.redis import keyspace
from service.redis.keyspace import WRITER_GROUP
from service.redis.replicas import ReplicasNotConfirmed, replica_wait
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.streams import ensure_consumer_group, stream_id
from service.redis.types import RedisClient
from service.settings import Settings

logger = logging.getLogger("wallet.writer")

# Original fields are stored in the dead-letter record under this prefix.
DEAD_LETTER_FIELD_PREFIX = b"field:"

_MAX_BIGINT = 2**63 - 1
_FIRST_BACKOFF_MS = 25
_MAX_CLAIM_INTERVAL_S = 5.0
# The writer's mark before a wait for the replicas (keyspace.writer_wait) outlives no writer.
WRITER_WAIT_TTL_MS = 60_000


T = TypeVar("T")
Entry = tuple[str, dict[bytes, bytes]]


@dataclass(slots=True)
class WriterStats:
    """Counters since start, for metrics (service/http/writer_metrics.py)."""

    # Entries stored in the ledger (or found already stored) and acknowledged.
    persisted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    # Ledger rows of the stored entries (a capture is two): inserted, or skipped because the
    # ledger held them already (an entry delivered again: a retry, a claim, a replay).
    rows_inserted: int = 0
    rows_skipped: int = 0
    # Failed attempts at a Redis or PostgreSQL step, each followed by a backoff.
    retries: int = 0
    # Age of the last batch's oldest entry when the batch was acknowledged.
    last_batch_lag_ms: float = 0.0
    # Unix times: of the last batch acknowledged, and of the last read of the stream that
    # answered (every writer_block_ms at most while idle): 0.0 before the first.
    last_batch_at_s: float = 0.0
    last_read_at_s: float = 0.0


class Unparseable(ValueError):
    """A stream entry that is not a valid transaction or hold record."""


def parse_entry(fields: dict[bytes, bytes]) -> StreamRecord:
    """The record in a stream entry: a transaction, or a hold event (``kind``
    hold_created, hold_voided, hold_expired; docs/holds.md). Raises Unparseable with the
    reason."""
    if not fields:
        raise Unparseable("the entry is no longer in the stream (deleted before it was stored)")
    try:
        record = record_from_stream_fields(fields)
        # A timestamp out of datetime's range raises here.
        if isinstance(record, Transaction):
            record.created_at  # noqa: B018
        elif isinstance(record, HoldEvent):
            datetime_from_us(record.at_us)
            datetime_from_us(record.expires_at_us)
        elif record.at_us is not None:
            datetime_from_us(record.at_us)
    except KeyError as error:
        raise Unparseable(f"missing field {error}") from error
    except (ValueError, TypeError, OverflowError, OSError) as error:
        raise Unparseable(f"{type(error).__name__}: {error}") from error
    if isinstance(record, Transaction):
        what = f"transaction {record.txn_id}"
        numbers: tuple[int, ...] = (
            record.txn_id,
            record.from_user_id or 0,
            record.to_user_id,
            record.amount_kopecks,
            record.created_at_us,
            record.from_balance_kopecks or 0,
            record.to_balance_kopecks,
            record.hold_id or 0,
            record.refund_of or 0,
        )
    elif isinstance(record, HoldEvent):
        what = f"{record.kind} of hold {record.hold_id}"
        numbers = (
            record.hold_id,
            record.from_user_id,
            record.to_user_id,
            record.amount_kopecks,
            record.at_us,
            record.expires_at_us,
        )
    else:
        what = f"{record.kind} of transfer {record.txn_id}"
        numbers = (
            record.txn_id,
            record.from_user_id,
            record.to_user_id or 0,
            record.amount_kopecks,
            record.at_us or 0,
            record.balance_after_kopecks or 0,
        )
    if not all(0 <= n <= _MAX_BIGINT for n in numbers):
        raise Unparseable(f"a number is out of range in {what}")
    return record


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps; True (early) if ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class StreamWriter:
    """One consumer of the writers' group of one bucket's stream. Several may run at once,
    in any processes."""

    # Trim the stream at most this often.
    trim_interval_s = 5.0

    def __init__(
        self,
        settings: Settings,
        redis: RedisClient,
        engine: AsyncEngine,
        bucket: int,
        stats: WriterStats | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._engine = engine
        self._bucket = bucket
        self._stream = keyspace.txn_stream(bucket)
        self._dead_letters = keyspace.txn_dead_letter(bucket)
        self._wait_mark = keyspace.writer_wait(bucket)
        self.consumer = settings.writer_consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        # Given by a caller that serves them as metrics.
        self.stats = WriterStats() if stats is None else stats
        self._group_ready = False
        # Re-reading this consumer's own pending entries: the next id to read after;
        # None once they are all read.
        self._own_pending_cursor: str | None = "0"
        self._claim_cursor = "0-0"
        self._next_claim_at = 0.0
        self._next_trim_at = 0.0
        self._never = asyncio.Event()
        self._dead_letter = LuaScript(redis, "dead_letter")
        self._replica_wait = replica_wait(settings)
        self._mark = LuaScript(redis, "writer_mark")

    async def run(self, stop: asyncio.Event) -> None:
        """Drains the stream until ``stop`` is set; the batch in hand is finished first."""
        logger.info("writer %s started", self.consumer)
        while not stop.is_set():
            await self._drain(stop)
        logger.info("writer %s stopped", self.consumer)

    async def drain_once(self) -> int:
        """Reads one batch, stores and acknowledges it; returns the entries handled.

        Retries (with backoff) until the batch is stored and acknowledged.
        """
        return await self._drain(self._never)

    async def _drain(self, stop: asyncio.Event) -> int:
        entries = await self._retrying("read the stream", self._next_batch_or_none, stop)
        if entries is not None:
            self.stats.last_read_at_s = time.time()
        handled = await self._handle(entries, stop) if entries else 0
        if time.monotonic() >= self._next_trim_at:
            self._next_trim_at = time.monotonic() + self.trim_interval_s
            try:
                await self.trim_stream()
            except Exception as error:
                if not is_outage(error):
                    raise
                logger.warning("could not trim %s: %s", self._stream, error)
        return handled

    # Reading.

    async def _next_batch(self) -> list[Entry]:
        """This consumer's own pending entries first, then claimable ones, then new ones."""
        if not self._group_ready:
            await ensure_consumer_group(self._redis, self._bucket)
            self._group_ready = True
        if self._own_pending_cursor is not None:
            entries = await self._read_group(self._own_pending_cursor, block_ms=None)
            if entries:
                self._own_pending_cursor = entries[-1][0]
                logger.info("re-reading %d pending entries of %s", len(entries), self.consumer)
                return entries
            self._own_pending_cursor = None
        if time.monotonic() >= self._next_claim_at:
            entries = await self._claim()
            if entries:
                return entries
        return await self._read_group(">", block_ms=self._settings.writer_block_ms)

    async def _next_batch_or_none(self) -> list[Entry]:
        """The next batch; none when Redis lost the group (it lost its data), which is
        then created again for the next read."""
        try:
            return await self._next_batch()
        except ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            logger.warning("the consumer group %s is gone; creating it again", WRITER_GROUP)
            self._group_ready = False
            return []

    async def _read_group(self, after: str, block_ms: int | None) -> list[Entry]:
        reply = await self._redis.xreadgroup(
            WRITER_GROUP,
            self.consumer,
            {self._stream: after},
            count=self._settings.writer_batch_size,
            block=block_ms,
        )
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        entries: list[Entry] = []
        for _, stream_entries in streams:
            for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], stream_entries):
                entries.append((_text(entry_id), fields or {}))
        await self._confirm([entry_id for entry_id, _ in entries])
        return entries

    async def _claim(self) -> list[Entry]:
        """Takes over entries that another (dead) consumer read and left unacknowledged."""
        reply: list[Any] = await self._redis.xautoclaim(
            self._stream,
            WRITER_GROUP,
            self.consumer,
            min_idle_time=self._settings.writer_claim_idle_ms,
            start_id=self._claim_cursor,
            count=self._settings.writer_batch_size,
        )
        # The entries claimed (not those no longer in the stream: no longer pending either).
        await self._confirm([_text(entry_id) for entry_id, _ in reply[1]])
        self._claim_cursor = _text(reply[0])
        if self._claim_cursor == "0-0":  # the whole pending list was scanned
            interval = min(self._settings.writer_claim_idle_ms / 2000, _MAX_CLAIM_INTERVAL_S)
            self._next_claim_at = time.monotonic() + interval
        entries = [(_text(entry_id), fields or {}) for entry_id, fields in reply[1]]
        # Pending entries that are no longer in the stream: Redis has dropped them from the
        # pending list; they are dead-lettered so that the loss is on record.
        entries += [(_text(entry_id), {}) for entry_id in (reply[2] if len(reply) > 2 else [])]
        if entries:
            logger.warning(
                "claimed %d entries idle for over %d ms",
                len(entries),
                self._settings.writer_claim_idle_ms,
            )
        return entries

    async def _confirm(self, entry_ids: list[str]) -> None:
        """With a replica wait: returns once the replicas have the entries just read;
        else raises ReplicasNotConfirmed (an outage: retried), and the entries delivered to
        this consumer are read again next time.

        The wait covers the writes of the connection it is sent on (a read writes nothing,
        and the pool may hand out another connection each time): a write of the writer's
        own after the read, through the script calls with their wait, covers every entry
        added before it, on the primary of the stream's bucket. The script first checks
        that the entries are pending for this consumer where it runs: a read that a primary
        since replaced served (on Sentinel each connection follows within a second) is not
        confirmed by the new primary's replicas (lua/writer_mark.lua)."""
        if self._replica_wait is None or not entry_ids:
            return
        try:
            marked = await self._mark(
                keys=[self._wait_mark, self._stream],
                args=[self.consumer, WRITER_WAIT_TTL_MS, WRITER_GROUP, *entry_ids],
                wait_for_replicas=True,
            )
        except ReplicasNotConfirmed:
            self._own_pending_cursor = "0"
            raise
        if marked == b"elsewhere":
            self._own_pending_cursor = "0"
            raise ReplicasNotConfirmed(marked, "the entries read are not pending on this server")
        if marked != b"ok":
            raise ScriptArgumentRejected(f"writer_mark: {marked!r}")

    # Storing and acknowledging.

    async def _handle(self, entries: list[Entry], stop: asyncio.Event) -> int:
        fields_by_id = dict(entries)
        good: list[tuple[str, StreamRecord]] = []
        dead: list[tuple[str, str]] = []
        for entry_id, fields in entries:
            try:
                good.append((entry_id, parse_entry(fields)))
            except Unparseable as error:
                dead.append((entry_id, f"unparseable: {error}"))
        inserted = 0
        if good:
            stored = await self._retrying(
                "write the batch to PostgreSQL", lambda: insert_isolating(self._engine, good), stop
            )
            if stored is None:
                return 0
            inserted = stored[0]
            dead += stored[1]
        for entry_id, reason in dead:
            logger.error("dead-lettering stream entry %s: %s", entry_id, reason)
        dead_ids = {entry_id for entry_id, _ in dead}
        acked = await self._retrying(
            "acknowledge the batch",
            lambda: self._ack([i for i, _ in good if i not in dead_ids], dead, fields_by_id),
            stop,
        )
        if acked is None:
            return 0
        oldest_ms = min(stream_id(entry_id)[0] for entry_id, _ in entries)
        rows = sum(ledger_row_count(record) for i, record in good if i not in dead_ids)
        now_s = time.time()
        self.stats.persisted += len(entries) - len(dead)
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1
        self.stats.rows_inserted += inserted
        self.stats.rows_skipped += rows - inserted
        self.stats.last_batch_lag_ms = max(0.0, now_s * 1000 - oldest_ms)
        self.stats.last_batch_at_s = now_s
        return len(entries)

    async def _ack(
        self,
        stored_ids: list[str],
        dead: list[tuple[str, str]],
        fields_by_id: dict[str, dict[bytes, bytes]],
    ) -> bool:
        """Acknowledges stored entries; dead-letters and acknowledges the others."""
        for entry_id, reason in dead:
            record: list[bytes | str] = ["entry_id", entry_id, "reason", reason]
            record += ["consumer", self.consumer, "failed_at_ms", str(int(time.time() * 1000))]
            for name, value in fields_by_id[entry_id].items():
                record += [DEAD_LETTER_FIELD_PREFIX + name, value]
            reply = await self._dead_letter(
                keys=[self._stream, self._dead_letters], args=[WRITER_GROUP, entry_id, *record]
            )
            if not isinstance(reply, int):
                raise ScriptArgumentRejected(repr(reply))
        if stored_ids:
            await self._redis.xack(self._stream, WRITER_GROUP, *stored_ids)
        return True

    async def _retrying(
        self, what: str, operation: Callable[[], Awaitable[T]], stop: asyncio.Event
    ) -> T | None:
        """Runs ``operation`` until it succeeds, backing off after each outage of Redis or
        PostgreSQL. Any other error is a bug and propagates: the writer crashes (and its
        entries stay pending for the next writer) instead of retrying it for ever.

        Returns None, having given up, only when ``stop`` is set during a backoff.
        """
        attempt = 0
        while True:
            try:
                return await operation()
            except Exception as error:
                if not is_outage(error):
                    raise
                attempt += 1
                self.stats.retries += 1
                ceiling_ms = min(
                    self._settings.writer_retry_max_backoff_ms,
                    _FIRST_BACKOFF_MS * 2 ** min(attempt, 20),
                )
                delay_s = random.uniform(ceiling_ms / 2, ceiling_ms) / 1000
                logger.warning(
                    "writer %s could not %s (attempt %d), retrying in %.0f ms: %s: %s",
                    self.consumer,
                    what,
                    attempt,
                    delay_s * 1000,
                    type(error).__name__,
                    error,
                    exc_info=attempt == 1,
                )
            if await _sleep_or_stop(stop, delay_s):
                logger.warning(
                    "writer %s stopping before it could %s; unacknowledged entries stay"
                    " pending and are read again on restart",
                    self.consumer,
                    what,
                )
                return None

    # Retention.

    async def trim_stream(self) -> int:
        """Removes entries that every consumer group has acknowledged and that are older
        than ``stream_retention_s``; returns how many were removed.

        The bound is read before the pending lists: an entry at or below a group's
        last-delivered id that is not pending at the later read was acknowledged.
        """
        try:
            groups = await self._redis.xinfo_groups(self._stream)
        except ResponseError as error:
            if "no such key" not in str(error):
                raise
            return 0  # Redis lost its data: nothing to trim
        if not groups:
            return 0
        bound = min(stream_id(group["last-delivered-id"]) for group in groups)
        for group in groups:
            pending = await self._redis.xpending(self._stream, group["name"])
            if pending["pending"]:
                bound = min(bound, stream_id(pending["min"]))
        seconds, micros = await self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        cutoff = (now_ms - self._settings.stream_retention_s * 1000, 0)
        min_id = min(bound, cutoff)
        if min_id <= (0, 0):
            return 0
        removed = await self._redis.xtrim(
            self._stream, minid=f"{min_id[0]}-{min_id[1]}", approximate=False
        )
        if removed:
            logger.info("trimmed %d entries below %d-%d from %s", removed, *min_id, self._stream)
        return removed
