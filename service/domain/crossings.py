"""The stream records of a transfer across buckets (docs/scaling.md, "Across buckets") and
the ledger rows the writer stores of them, side by side. Each bucket's stream holds its own
side: the payer's bucket the reservation (``transfer_out``) and its end
(``transfer_settled`` or ``transfer_voided``), the payee's bucket the credit
(``transfer_in``). The two writers store them independently, each row keyed by the
transfer's id. A refund of a transfer across buckets crosses back with the same records,
which then name the transfer refunded (``refund_of``)."""

from dataclasses import dataclass
from typing import Any, Literal

from service.domain.choices import one_of
from service.domain.times import datetime_from_us

CrossingKind = Literal["transfer_out", "transfer_in", "transfer_settled", "transfer_voided"]
CROSSING_KINDS: tuple[CrossingKind, ...] = (
    "transfer_out",
    "transfer_in",
    "transfer_settled",
    "transfer_voided",
)


@dataclass(frozen=True, slots=True)
class CrossingRecord:
    kind: CrossingKind
    txn_id: int
    from_user_id: int
    amount_kopecks: int
    # The payee: a reservation's and a credit's.
    to_user_id: int | None
    # A reservation's stamp (the payer's bucket), a credit's (the payee's), a void's; a
    # settle has none (it moves no one's balance).
    at_us: int | None
    # The payer's balance after a reservation or a void, the payee's after a credit.
    balance_after_kopecks: int | None
    idempotency_key: str | None  # a reservation's
    # A refund across buckets (lua/refund.lua): the transfer it refunds, on its reservation
    # and its credit; None for a transfer.
    refund_of: int | None = None
    # A refund's reservation: the fingerprint recorded under its key ("all" or an amount,
    # which its row alone cannot tell: `wallet rebuild`).
    idempotency_fingerprint: str | None = None
    # A batch's leg's reservation (lua/transfer_batch.lua): its index in the batch.
    batch_leg: int | None = None
    # A hold's capture across buckets (lua/hold_capture_across.lua): the hold, on its
    # reservation and its credit.
    hold_id: int | None = None

    def __post_init__(self) -> None:
        assert self.amount_kopecks >= 1, self
        with_payee = self.kind in ("transfer_out", "transfer_in")
        assert (self.to_user_id is not None) == with_payee, self
        assert (self.at_us is None) == (self.kind == "transfer_settled"), self
        assert (self.balance_after_kopecks is None) == (self.kind == "transfer_settled"), self
        assert self.refund_of is None or with_payee, self
        assert self.hold_id is None or (with_payee and self.refund_of is None), self
        assert self.idempotency_fingerprint is None or self.idempotency_key is not None, self
        assert self.batch_leg is None or (self.kind == "transfer_out" and self.batch_leg >= 0)

    # The stream entries (lua/transfer.lua, lua/transfer_credit.lua, lua/transfer_settle.lua,
    # lua/transfer_void.lua).

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> "CrossingRecord":
        """Parses one stream entry; raises ValueError or KeyError on a malformed one."""
        kind = one_of(fields[b"kind"].decode(), CROSSING_KINDS, "kind of a transfer across buckets")
        balance_field = b"to_balance" if kind == "transfer_in" else b"from_balance"
        with_payee = kind in ("transfer_out", "transfer_in")
        settled = kind == "transfer_settled"
        idem_key = fields[b"idem_key"].decode("ascii") if kind == "transfer_out" else ""
        refund_of = int(fields[b"refund_of"]) if with_payee and b"refund_of" in fields else None
        hold_id = int(fields[b"hold_id"]) if with_payee and b"hold_id" in fields else None
        fingerprint = fields.get(b"idem_fp", b"").decode("ascii") if idem_key else ""
        leg_raw = fields.get(b"leg") if kind == "transfer_out" else None
        batch_leg = None if leg_raw is None else int(leg_raw)
        txn_id, from_user_id = int(fields[b"id"]), int(fields[b"from"])
        amount_kopecks = int(fields[b"amount"])
        to_user_id = int(fields[b"to"]) if with_payee else None
        # Checked before the record is made: its invariants assert, and a malformed entry
        # must be refused (the writer dead-letters it), not crash its reader.
        if (
            min(txn_id, from_user_id, amount_kopecks, to_user_id or 1, refund_of or 1) < 1
            or (batch_leg is not None and batch_leg < 0)
            or (hold_id is not None and (hold_id < 1 or refund_of is not None))
            or (from_user_id == to_user_id)
        ):
            raise ValueError(f"malformed {kind} record of transfer {txn_id}")
        return cls(
            kind=kind,
            txn_id=txn_id,
            from_user_id=from_user_id,
            amount_kopecks=amount_kopecks,
            to_user_id=to_user_id,
            at_us=None if settled else int(fields[b"created_at_us"]),
            balance_after_kopecks=None if settled else int(fields[balance_field]),
            idempotency_key=idem_key or None,
            refund_of=refund_of,
            idempotency_fingerprint=fingerprint or None,
            batch_leg=batch_leg,
            hold_id=hold_id,
        )

    # The ledger rows (persistence/models.py): one table per kind of record, keyed by the
    # transfer's id; a settle and a void share ``transfer_ends``.

    def ledger_row(self, stream_entry_id: str) -> tuple[str, dict[str, Any]]:
        """``(table, row)``."""
        at = None if self.at_us is None else datetime_from_us(self.at_us)
        if self.kind == "transfer_out":
            return "transfer_reservations", {
                "id": self.txn_id,
                "from_user_id": self.from_user_id,
                "to_user_id": self.to_user_id,
                "amount_kopecks": self.amount_kopecks,
                "created_at": at,
                "from_balance_after_kopecks": self.balance_after_kopecks,
                "idempotency_key": self.idempotency_key,
                "stream_entry_id": stream_entry_id,
                "refund_of": self.refund_of,
                "idempotency_fingerprint": self.idempotency_fingerprint,
                "batch_leg": self.batch_leg,
                "hold_id": self.hold_id,
            }
        if self.kind == "transfer_in":
            return "transfer_credits", {
                "transfer_id": self.txn_id,
                "from_user_id": self.from_user_id,
                "to_user_id": self.to_user_id,
                "amount_kopecks": self.amount_kopecks,
                "credited_at": at,
                "to_balance_after_kopecks": self.balance_after_kopecks,
                "stream_entry_id": stream_entry_id,
                "refund_of": self.refund_of,
                "hold_id": self.hold_id,
            }
        return "transfer_ends", {
            "transfer_id": self.txn_id,
            "outcome": "settled" if self.kind == "transfer_settled" else "voided",
            "from_user_id": self.from_user_id,
            "amount_kopecks": self.amount_kopecks,
            "at": at,
            "from_balance_after_kopecks": self.balance_after_kopecks,
            "stream_entry_id": stream_entry_id,
        }
