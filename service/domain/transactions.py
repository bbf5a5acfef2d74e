"""A transaction, and every form it takes, side by side: the stream entry a money script
appends, the ledger row the writer stores, and the JSON object the API answers with.
Adding a field means changing this file, the scripts that write it, and the migration."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from service.domain.amounts import format_rubles
from service.domain.times import datetime_from_us, rfc3339, us_from_datetime

Kind = Literal["deposit", "transfer"]
Direction = Literal["in", "out"]


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

    @property
    def created_at(self) -> datetime:
        return datetime_from_us(self.created_at_us)

    # The stream entry (lua/deposit.lua, lua/transfer.lua).

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> "Transaction":
        """Parses one stream entry; raises ValueError or KeyError on a malformed one."""
        kind = fields[b"kind"].decode()
        if kind not in ("deposit", "transfer"):
            raise ValueError(f"unknown transaction kind {kind!r}")
        from_raw, from_balance_raw = fields[b"from"], fields[b"from_balance"]
        if (kind == "deposit") != (from_raw == b"") or (from_raw == b"") != (
            from_balance_raw == b""
        ):
            raise ValueError(f"sender fields do not match kind {kind!r}")
        record = cls(
            txn_id=int(fields[b"id"]),
            kind="deposit" if kind == "deposit" else "transfer",
            from_user_id=int(from_raw) if from_raw else None,
            to_user_id=int(fields[b"to"]),
            amount_kopecks=int(fields[b"amount"]),
            created_at_us=int(fields[b"created_at_us"]),
            from_balance_kopecks=int(from_balance_raw) if from_balance_raw else None,
            to_balance_kopecks=int(fields[b"to_balance"]),
            idempotency_key=fields[b"idem_key"].decode("ascii") or None,
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
        }

    @classmethod
    def from_ledger(cls, row: LedgerRow) -> "Transaction":
        return cls(
            txn_id=row.id,
            kind="deposit" if row.kind == "deposit" else "transfer",
            from_user_id=row.from_user_id,
            to_user_id=row.to_user_id,
            amount_kopecks=row.amount_kopecks,
            created_at_us=us_from_datetime(row.created_at),
            from_balance_kopecks=row.from_balance_after_kopecks,
            to_balance_kopecks=row.to_balance_after_kopecks,
            idempotency_key=row.idempotency_key,
        )

    def as_json(self, direction: Direction | None = None) -> dict[str, object]:
        return transaction_json(
            txn_id=self.txn_id,
            from_user_id=self.from_user_id,
            to_user_id=self.to_user_id,
            amount_kopecks=self.amount_kopecks,
            created_at_us=self.created_at_us,
            direction=direction,
        )


def transaction_json(
    *,
    txn_id: int,
    from_user_id: int | None,
    to_user_id: int,
    amount_kopecks: int,
    created_at_us: int,
    direction: Direction | None = None,
) -> dict[str, object]:
    """The API's transaction object (the contract's "A transaction"); ``direction`` only
    in transfer history. A 201 builds it from what the script answered."""
    body: dict[str, object] = {
        "id": txn_id,
        "kind": "deposit" if from_user_id is None else "transfer",
        "amount": amount_kopecks,
        "amount_rub": format_rubles(amount_kopecks),
        "from_user_id": from_user_id,
        "to_user_id": to_user_id,
        "created_at": rfc3339(datetime_from_us(created_at_us)),
    }
    if direction is not None:
        body["direction"] = direction
    return body
