"""A transaction as the money scripts append it to the stream."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["deposit", "transfer"]


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

    @property
    def created_at(self) -> datetime:
        seconds, micros = divmod(self.created_at_us, 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
