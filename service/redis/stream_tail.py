"""The records that may not be in PostgreSQL yet, read from the Redis stream: transactions,
hold events and sides of transfers across buckets (service/domain/records.py)."""

import logging
from dataclasses import dataclass

from service.domain.crossings import CrossingRecord
from service.domain.holds import HoldEvent
from service.domain.postings import Posting, crossing_posting, posting_of
from service.domain.records import StreamRecord, record_from_stream_fields
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

logger = logging.getLogger("wallet.stream_tail")


@dataclass(frozen=True, slots=True)
class Tail:
    records: list[StreamRecord]  # oldest first
    overflow: bool  # more entries were unpersisted than were scanned
    # Entries that are not a valid record (the writer dead-letters them), left out of
    # ``records``: a read skips them, but they are unpersisted entries all the same.
    unparseable: tuple[str, ...] = ()
    # The stream id of the oldest unpersisted entry scanned, parseable or not.
    first_entry_id: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing unpersisted at all (within the entries scanned)."""
        return not self.records and not self.unparseable

    def describe_first(self) -> str | None:
        """The oldest entry, for a message ("transaction 12", "the hold_voided record of
        hold 5"); None when there is none. With both sorts of entries, the oldest
        parseable one is named."""
        if self.records:
            first = self.records[0]
            if isinstance(first, Transaction):
                return f"transaction {first.txn_id}"
            if isinstance(first, HoldEvent):
                return f"the {first.kind} record of hold {first.hold_id}"
            return f"the {first.kind} record of transfer {first.txn_id}"
        if self.unparseable:
            return f"the unparseable entry {self.unparseable[0]}"
        return None

    @property
    def transactions(self) -> list[Transaction]:
        """The transactions among the records, oldest first."""
        return [record for record in self.records if isinstance(record, Transaction)]

    def postings(self, user_id: int) -> list[Posting]:
        """The user's postings among the records of a tail read for the user, oldest first:
        the user's side of each transaction, and of each transfer across buckets that the
        tail's bucket, the user's, recorded (the payer's reservation and void, the payee's
        credit)."""
        found = []
        for record in self.records:
            if isinstance(record, Transaction):
                found.append(posting_of(record, user_id))
            elif isinstance(record, CrossingRecord):
                posting = crossing_posting(record)
                if posting is not None:
                    # A bucket's stream records only its own users' sides.
                    assert posting.viewer_user_id == user_id, (record, user_id)
                    found.append(posting)
        return found

    @property
    def hold_events(self) -> list[HoldEvent]:
        """The hold events (created, voided, expired) among the records, oldest first; a
        capture is a transaction (with ``hold_id``)."""
        return [record for record in self.records if isinstance(record, HoldEvent)]


async def unpersisted_tail(
    redis: RedisClient, bucket: int, max_entries: int, user_id: int | None = None
) -> Tail:
    """Reads the unpersisted tail of a bucket's stream (of one user, if given: records
    whose from or to is the user; of another bucket, those of holds toward the user) with
    one atomic script.

    Call it before querying PostgreSQL; see the header of lua/stream_tail.lua for why.
    """
    script = LuaScript(redis, "stream_tail")
    reply: list[bytes | list[bytes]] = await script(
        keys=[keyspace.txn_stream(bucket)],
        args=[keyspace.WRITER_GROUP, str(max_entries), "" if user_id is None else user_id],
    )
    head = reply[0]
    if head not in (b"0", b"1"):
        raise ScriptArgumentRejected(repr(head))
    records: list[StreamRecord] = []
    unparseable: list[str] = []
    first = reply[1] if len(reply) > 1 else None
    assert first is None or isinstance(first, bytes)
    for i in range(2, len(reply), 2):
        flat = reply[i]
        assert isinstance(flat, list)
        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
        try:
            records.append(record_from_stream_fields(fields))
        except (KeyError, ValueError) as error:
            # The writer dead-letters it: it will never be in the ledger either.
            entry_id = reply[i - 1]
            assert isinstance(entry_id, bytes)
            unparseable.append(entry_id.decode())
            logger.warning("unparseable stream entry %s in the tail: %r", entry_id, error)
    return Tail(
        records=records,
        overflow=head == b"1",
        unparseable=tuple(unparseable),
        first_entry_id=None if first is None else first.decode(),
    )
