"""A hold, and the events of its life, in every form they take side by side: the Redis
hash the scripts keep (lua/hold_create.lua), the stream entries they append, the ledger
rows the writer stores (``holds``, ``hold_events``) and the JSON object the API answers
with. docs/holds.md gives the design.

A hold is pending until it is captured or voided by its payee, or expires. It expires at
``expires_at_us`` exactly: from that instant on it is expired, whether or not a script or
the sweeper has marked it yet, so every reader derives the status with ``status_at``.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from service.domain.amounts import format_rubles
from service.domain.choices import one_of
from service.domain.times import datetime_from_us, rfc3339, us_from_datetime

Status = Literal["pending", "captured", "voided", "expired"]
STATUSES: tuple[Status, ...] = ("pending", "captured", "voided", "expired")
# The events after creation; a hold has at most one of them. A capture is recorded as its
# transaction (a transfer with hold_id), from which the writer stores the event.
EndEvent = Literal["captured", "voided", "expired"]
END_EVENTS: tuple[EndEvent, ...] = ("captured", "voided", "expired")
# Stream entry kinds of hold events (a capture's entry is its transaction).
STREAM_KINDS = ("hold_created", "hold_voided", "hold_expired")


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: int
    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    # As recorded; ``status_at`` gives the status at an instant.
    status: Status
    captured_amount_kopecks: int
    created_at_us: int
    expires_at_us: int
    capture_txn_id: int | None

    def __post_init__(self) -> None:
        assert self.amount_kopecks >= 1, self
        assert 0 <= self.captured_amount_kopecks <= self.amount_kopecks, self
        assert (self.status == "captured") == (self.capture_txn_id is not None), self
        assert (self.status == "captured") == (self.captured_amount_kopecks > 0), self
        assert self.created_at_us < self.expires_at_us, self

    def status_at(self, now_us: int) -> Status:
        """Pending until ``expires_at_us``; expired from that instant on."""
        if self.status == "pending" and now_us >= self.expires_at_us:
            return "expired"
        return self.status

    # The Redis hash (lua/hold_create.lua, lua/hold_capture.lua, lua/hold_void.lua).

    @classmethod
    def from_redis_hash(cls, hold_id: int, fields: dict[bytes, bytes]) -> "Hold":
        """Parses ``hold:<id>``; raises ValueError or KeyError on a malformed one."""
        capture_raw = fields[b"capture_txn_id"]
        return cls(
            hold_id=hold_id,
            from_user_id=int(fields[b"from"]),
            to_user_id=int(fields[b"to"]),
            amount_kopecks=int(fields[b"amount"]),
            status=one_of(fields[b"status"].decode(), STATUSES, "hold status"),
            captured_amount_kopecks=int(fields[b"captured_amount"]),
            created_at_us=int(fields[b"created_at_us"]),
            expires_at_us=int(fields[b"expires_at_us"]),
            capture_txn_id=int(capture_raw) if capture_raw else None,
        )

    # The ledger (``holds`` and its one ``hold_events`` row, if any).

    @classmethod
    def from_ledger(cls, row: "HoldRow", end: "HoldEventRow | None") -> "Hold":
        created = cls(
            hold_id=row.id,
            from_user_id=row.from_user_id,
            to_user_id=row.to_user_id,
            amount_kopecks=row.amount_kopecks,
            status="pending",
            captured_amount_kopecks=0,
            created_at_us=us_from_datetime(row.created_at),
            expires_at_us=us_from_datetime(row.expires_at),
            capture_txn_id=None,
        )
        if end is None:
            return created
        return created.ended(
            one_of(end.event, END_EVENTS, "hold event"), end.amount_kopecks, end.transaction_id
        )

    def ended(self, event: EndEvent, amount_kopecks: int, txn_id: int | None) -> "Hold":
        """This hold after its end event (``amount_kopecks``: captured, or released)."""
        captured = event == "captured"
        return Hold(
            hold_id=self.hold_id,
            from_user_id=self.from_user_id,
            to_user_id=self.to_user_id,
            amount_kopecks=self.amount_kopecks,
            status=event,
            captured_amount_kopecks=amount_kopecks if captured else 0,
            created_at_us=self.created_at_us,
            expires_at_us=self.expires_at_us,
            capture_txn_id=txn_id if captured else None,
        )

    def as_json(self, now_us: int) -> dict[str, object]:
        """The contract's hold object, with its status at ``now_us``."""
        return {
            "id": self.hold_id,
            "status": self.status_at(now_us),
            "amount": self.amount_kopecks,
            "amount_rub": format_rubles(self.amount_kopecks),
            "captured_amount": self.captured_amount_kopecks,
            "from_user_id": self.from_user_id,
            "to_user_id": self.to_user_id,
            "created_at": rfc3339(datetime_from_us(self.created_at_us)),
            "expires_at": rfc3339(datetime_from_us(self.expires_at_us)),
            "capture_transaction_id": self.capture_txn_id,
        }


class HoldRow(Protocol):
    """What a stored ``holds`` row offers (persistence/models.py)."""

    id: int
    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    created_at: datetime
    expires_at: datetime


class HoldEventRow(Protocol):
    """What a stored ``hold_events`` row offers (persistence/models.py)."""

    hold_id: int
    event: str
    amount_kopecks: int
    transaction_id: int | None


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """A stream entry of kind hold_created, hold_voided or hold_expired.

    Fields: kind hold from to amount created_at_us expires_at_us idem_key, and idem_fp
    (the fingerprint recorded under the key) when there is a key. ``amount`` is the hold's
    amount (created) or the amount released to the payer (voided, expired);
    ``created_at_us`` is the instant of the event; ``expires_at_us`` is the hold's, in
    every kind; ``idem_key`` is "" for an expiry.
    """

    kind: Literal["hold_created", "hold_voided", "hold_expired"]
    hold_id: int
    from_user_id: int
    to_user_id: int
    amount_kopecks: int
    at_us: int
    expires_at_us: int
    idempotency_key: str | None
    idempotency_fingerprint: str | None = None

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> "HoldEvent":
        """Parses one stream entry; raises ValueError or KeyError on a malformed one."""
        raw_kind = fields[b"kind"].decode()
        if raw_kind == "hold_created":
            kind: Literal["hold_created", "hold_voided", "hold_expired"] = "hold_created"
        elif raw_kind == "hold_voided":
            kind = "hold_voided"
        elif raw_kind == "hold_expired":
            kind = "hold_expired"
        else:
            raise ValueError(f"not a hold event: {raw_kind!r}")
        idem_key, fingerprint = fields[b"idem_key"], fields.get(b"idem_fp", b"")
        if fingerprint and not idem_key:
            raise ValueError("idem_fp without idem_key")
        event = cls(
            kind=kind,
            hold_id=int(fields[b"hold"]),
            from_user_id=int(fields[b"from"]),
            to_user_id=int(fields[b"to"]),
            amount_kopecks=int(fields[b"amount"]),
            at_us=int(fields[b"created_at_us"]),
            expires_at_us=int(fields[b"expires_at_us"]),
            idempotency_key=idem_key.decode("ascii") or None,
            idempotency_fingerprint=fingerprint.decode("ascii") or None,
        )
        if (
            min(event.hold_id, event.from_user_id, event.to_user_id, event.amount_kopecks) < 1
            or event.from_user_id == event.to_user_id
        ):
            raise ValueError(f"values out of range in hold event {event.hold_id}")
        return event

    def ledger_row(self, stream_entry_id: str) -> tuple[str, dict[str, Any]]:
        """``(table, row)``: a ``holds`` row for a creation, else a ``hold_events`` row."""
        if self.kind == "hold_created":
            return "holds", {
                "id": self.hold_id,
                "from_user_id": self.from_user_id,
                "to_user_id": self.to_user_id,
                "amount_kopecks": self.amount_kopecks,
                "created_at": datetime_from_us(self.at_us),
                "expires_at": datetime_from_us(self.expires_at_us),
                "idempotency_key": self.idempotency_key,
                "stream_entry_id": stream_entry_id,
                "idempotency_fingerprint": self.idempotency_fingerprint,
            }
        return "hold_events", {
            "hold_id": self.hold_id,
            "event": "voided" if self.kind == "hold_voided" else "expired",
            "at": datetime_from_us(self.at_us),
            "amount_kopecks": self.amount_kopecks,
            "transaction_id": None,
            "idempotency_key": self.idempotency_key,
            "stream_entry_id": stream_entry_id,
            "idempotency_fingerprint": self.idempotency_fingerprint,
        }
