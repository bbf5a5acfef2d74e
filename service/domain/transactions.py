"""A transaction, and every form it takes, side by side: the stream entry a money script
appends, the ledger row the writer stores, and the JSON object the API answers with.
Adding a field means changing this file, the scripts that write it, and the migration."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from service.domain.amounts import format_rubles
from service.domain.choices import one_of
from service.domain.times import datetime_from_us, rfc3339, us_from_datetime

Kind = Literal["deposit", "transfer", "refund"]
KINDS: tuple[Kind, ...] = ("deposit", "transfer", "refund")
# What a history or a statement lists (service/domain/postings.py): the transactions, and
# the reversal of a transfer across buckets that a void undid.
ItemKind = Kind | Literal["reversal"]
# How the fingerprint recorded under a batch's key begins (lua/transfer_batch.lua), on every
# leg's ledger row: what tells a batch's leg from a transfer.
BATCH_FINGERPRINT_PREFIX = "batch:"
ITEM_KINDS: tuple[ItemKind, ...] = (*KINDS, "reversal")


class LedgerRow(Protocol):
    """What a stored ``transactions`` row offers (persistence/models.py)."""

    id: int
    kind: str
    from_user_id: int | None
    to_user_id: int
    amount_kopecks: int
    created_at: datetime
    from_balance_after_kopecks: int | None
    to_balance_after_kopecks: int
    idempotency_key: str | None
    hold_id: int | None
    refund_of: int | None
    idempotency_fingerprint: str | None


@dataclass(frozen=True, slots=True)
class Transaction:
    txn_id: int
    kind: Kind
    from_user_id: int | None
    to_user_id: int
    amount_kopecks: int
    created_at_us: int
    from_balance_kopecks: int | None
    to_balance_kopecks: int
    idempotency_key: str | None
    # A capture of a hold (kind transfer): the hold. A refund: the transfer it refunds.
    hold_id: int | None = None
    refund_of: int | None = None
    # The fingerprint the script recorded under idempotency_key (stream field idem_fp),
    # written by the scripts whose fingerprint the record alone does not give: a capture,
    # a refund, a batch's legs (docs/holds.md). None without a key, and for deposits and
    # transfers, whose fingerprint is derived from the record.
    idempotency_fingerprint: str | None = None

    @property
    def created_at(self) -> datetime:
        return datetime_from_us(self.created_at_us)

    def balance_after_kopecks(self, viewer_user_id: int) -> int:
        """The viewer's balance right after this transaction (the viewer is a party)."""
        if viewer_user_id == self.to_user_id:
            return self.to_balance_kopecks
        if viewer_user_id == self.from_user_id and self.from_balance_kopecks is not None:
            return self.from_balance_kopecks
        raise ValueError(f"user {viewer_user_id} is not a party to transaction {self.txn_id}")

    # The stream entry (lua/deposit.lua, lua/transfer.lua, lua/transfer_batch.lua,
    # lua/hold_capture.lua, lua/refund.lua). ``hold_id``, ``refund_of`` and ``idem_fp`` are
    # present only when they apply.

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> "Transaction":
        """Parses one stream entry; raises ValueError or KeyError on a malformed one."""
        kind = fields[b"kind"].decode()
        if kind not in KINDS:
            raise ValueError(f"unknown transaction kind {kind!r}")
        from_raw, from_balance_raw = fields[b"from"], fields[b"from_balance"]
        if (kind == "deposit") != (from_raw == b"") or (from_raw == b"") != (
            from_balance_raw == b""
        ):
            raise ValueError(f"sender fields do not match kind {kind!r}")
        hold_raw, refund_of_raw = fields.get(b"hold_id", b""), fields.get(b"refund_of", b"")
        if (hold_raw != b"" and kind != "transfer") or (
            (refund_of_raw != b"") != (kind == "refund")
        ):
            raise ValueError(f"hold_id or refund_of do not match kind {kind!r}")
        idem_key, fingerprint = fields[b"idem_key"], fields.get(b"idem_fp", b"")
        if fingerprint and not idem_key:
            raise ValueError("idem_fp without idem_key")
        record = cls(
            txn_id=int(fields[b"id"]),
            kind=one_of(kind, KINDS, "transaction kind"),
            from_user_id=int(from_raw) if from_raw else None,
            to_user_id=int(fields[b"to"]),
            amount_kopecks=int(fields[b"amount"]),
            created_at_us=int(fields[b"created_at_us"]),
            from_balance_kopecks=int(from_balance_raw) if from_balance_raw else None,
            to_balance_kopecks=int(fields[b"to_balance"]),
            idempotency_key=idem_key.decode("ascii") or None,
            hold_id=int(hold_raw) if hold_raw else None,
            refund_of=int(refund_of_raw) if refund_of_raw else None,
            idempotency_fingerprint=fingerprint.decode("ascii") or None,
        )
        if record.txn_id < 1 or record.amount_kopecks < 1 or record.to_balance_kopecks < 0:
            raise ValueError(f"values out of range in transaction {record.txn_id}")
        return record

    # The ledger row (persistence/models.py, ``transactions``).

    def ledger_row(self, stream_entry_id: str) -> dict[str, Any]:
        return {
            "id": self.txn_id,
            "kind": self.kind,
            "from_user_id": self.from_user_id,
            "to_user_id": self.to_user_id,
            "amount_kopecks": self.amount_kopecks,
            "created_at": self.created_at,
            "from_balance_after_kopecks": self.from_balance_kopecks,
            "to_balance_after_kopecks": self.to_balance_kopecks,
            "idempotency_key": self.idempotency_key,
            "stream_entry_id": stream_entry_id,
            "hold_id": self.hold_id,
            "refund_of": self.refund_of,
            "idempotency_fingerprint": self.idempotency_fingerprint,
        }

    @classmethod
    def from_ledger(cls, row: LedgerRow) -> "Transaction":
        return cls(
            txn_id=row.id,
            kind=one_of(row.kind, KINDS, "transaction kind"),
            from_user_id=row.from_user_id,
            to_user_id=row.to_user_id,
            amount_kopecks=row.amount_kopecks,
            created_at_us=us_from_datetime(row.created_at),
            from_balance_kopecks=row.from_balance_after_kopecks,
            to_balance_kopecks=row.to_balance_after_kopecks,
            idempotency_key=row.idempotency_key,
            hold_id=row.hold_id,
            refund_of=row.refund_of,
            idempotency_fingerprint=row.idempotency_fingerprint,
        )


def transaction_json(
    *,
    txn_id: int,
    kind: ItemKind,
    from_user_id: int | None,
    to_user_id: int,
    amount_kopecks: int,
    created_at_us: int,
    hold_id: int | None = None,
    refund_of: int | None = None,
    reversal_of: int | None = None,
) -> dict[str, object]:
    """The API's transaction object (the contract's "A transaction"), with ``hold_id``
    for a capture, ``refund_of`` for a refund and ``reversal_of`` for a reversal. A 201
    builds it from what the script answered; histories and statements add the viewer's
    direction and balance (service/domain/postings.py)."""
    body: dict[str, object] = {
        "id": txn_id,
        "kind": kind,
        "amount": amount_kopecks,
        "amount_rub": format_rubles(amount_kopecks),
        "from_user_id": from_user_id,
        "to_user_id": to_user_id,
        "created_at": rfc3339(datetime_from_us(created_at_us)),
    }
    if hold_id is not None:
        body["hold_id"] = hold_id
    if refund_of is not None:
        body["refund_of"] = refund_of
    if reversal_of is not None:
        body["reversal_of"] = reversal_of
    return body
