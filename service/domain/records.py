"""A record of ``txn:stream``: a transaction (deposit, transfer, refund; a capture is a
transfer with ``hold_id``), a hold event (hold_created, hold_voided, hold_expired), or a
side of a transfer across buckets (transfer_out, transfer_in, transfer_settled,
transfer_voided). The field ``kind`` tells them apart (docs/holds.md, "Stream records";
docs/scaling.md, "Across buckets")."""

from typing import Any

from service.domain.crossings import CROSSING_KINDS, CrossingRecord
from service.domain.holds import STREAM_KINDS, HoldEvent
from service.domain.times import datetime_from_us
from service.domain.transactions import Transaction

StreamRecord = Transaction | HoldEvent | CrossingRecord


def record_from_stream_fields(fields: dict[bytes, bytes]) -> StreamRecord:
    """Parses one stream entry of either sort; raises ValueError or KeyError on a
    malformed one (an unknown kind is a ValueError)."""
    kind = fields[b"kind"].decode()
    if kind in STREAM_KINDS:
        return HoldEvent.from_stream_fields(fields)
    if kind in CROSSING_KINDS:
        return CrossingRecord.from_stream_fields(fields)
    return Transaction.from_stream_fields(fields)


def capture_event_row(
    capture: Transaction | CrossingRecord, stream_entry_id: str
) -> dict[str, Any]:
    """The ``hold_events`` row a capture ends its hold with: captured, at the capture's
    instant, for its amount. A capture is a transaction (a transfer with ``hold_id``), or,
    for a hold across buckets, the reservation of one (``transfer_out`` with ``hold_id``),
    whose key is the payee's, recorded in the payee's bucket, not here."""
    if isinstance(capture, CrossingRecord):
        if capture.hold_id is None or capture.kind != "transfer_out" or capture.at_us is None:
            raise ValueError(f"transfer {capture.txn_id} across buckets is not a capture")
        return {
            "hold_id": capture.hold_id,
            "event": "captured",
            "at": datetime_from_us(capture.at_us),
            "amount_kopecks": capture.amount_kopecks,
            "transaction_id": capture.txn_id,
            "idempotency_key": None,
            "stream_entry_id": stream_entry_id,
            "idempotency_fingerprint": None,
        }
    if capture.hold_id is None or capture.kind != "transfer":
        raise ValueError(f"transaction {capture.txn_id} is not a capture")
    return {
        "hold_id": capture.hold_id,
        "event": "captured",
        "at": capture.created_at,
        "amount_kopecks": capture.amount_kopecks,
        "transaction_id": capture.txn_id,
        "idempotency_key": capture.idempotency_key,
        "stream_entry_id": stream_entry_id,
        "idempotency_fingerprint": capture.idempotency_fingerprint,
    }
