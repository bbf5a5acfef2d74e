"""Stream records written by hand, in the exact shapes of docs/holds.md "Stream records",
with balances kept consistent the way the scripts keep them: for ledger tests that must not
depend on the Lua scripts.

``Book`` hands out ids from one counter (holds and transactions share it), keeps each
user's posted balance, and builds the fields; ``append`` XADDs them to ``txn:stream``.
"""

import itertools
from collections import defaultdict
from typing import Any, cast

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerHold, LedgerHoldEvent, User
from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET

Fields = dict[str, str]

# 2023-11-14T22:13:20Z: far from "now", so tests choose every instant themselves.
T0 = 1_700_000_000_000_000
SECOND = 1_000_000


class Book:
    def __init__(self, first_id: int = 1) -> None:
        self._ids = itertools.count(first_id)
        self.balances: dict[int, int] = defaultdict(int)
        self.holds: dict[int, Fields] = {}

    def next_id(self) -> int:
        return next(self._ids)

    def deposit(self, to: int, amount: int, at: int, idem_key: str = "") -> Fields:
        self.balances[to] += amount
        return {
            "id": str(self.next_id()),
            "kind": "deposit",
            "from": "",
            "to": str(to),
            "amount": str(amount),
            "created_at_us": str(at),
            "from_balance": "",
            "to_balance": str(self.balances[to]),
            "idem_key": idem_key,
        }

    def transfer(
        self,
        sender: int,
        to: int,
        amount: int,
        at: int,
        *,
        kind: str = "transfer",
        hold_id: int | None = None,
        refund_of: int | None = None,
        idem_key: str = "",
        idem_fp: str = "",
    ) -> Fields:
        self.balances[sender] -= amount
        self.balances[to] += amount
        assert self.balances[sender] >= 0, "the test moves money the sender does not have"
        fields = {
            "id": str(self.next_id()),
            "kind": kind,
            "from": str(sender),
            "to": str(to),
            "amount": str(amount),
            "created_at_us": str(at),
            "from_balance": str(self.balances[sender]),
            "to_balance": str(self.balances[to]),
            "idem_key": idem_key,
        }
        if hold_id is not None:
            fields["hold_id"] = str(hold_id)
        if refund_of is not None:
            fields["refund_of"] = str(refund_of)
        if idem_fp:
            fields["idem_fp"] = idem_fp
        return fields

    def refund(
        self,
        sender: int,
        to: int,
        amount: int,
        at: int,
        refund_of: int,
        idem_key: str = "",
        idem_fp: str = "",
    ) -> Fields:
        return self.transfer(
            sender,
            to,
            amount,
            at,
            kind="refund",
            refund_of=refund_of,
            idem_key=idem_key,
            idem_fp=idem_fp,
        )

    def hold(
        self,
        payer: int,
        payee: int,
        amount: int,
        at: int,
        expires_at: int,
        idem_key: str = "",
        idem_fp: str = "",
    ) -> Fields:
        """hold_created: the posted balances do not change (held money stays posted)."""
        hold_id = self.next_id()
        fields = {
            "kind": "hold_created",
            "hold": str(hold_id),
            "from": str(payer),
            "to": str(payee),
            "amount": str(amount),
            "created_at_us": str(at),
            "expires_at_us": str(expires_at),
            "idem_key": idem_key,
        }
        self.holds[hold_id] = fields
        if idem_fp:
            return dict(fields, idem_fp=idem_fp)
        return fields

    def capture(
        self, hold_id: int, amount: int, at: int, idem_key: str = "", idem_fp: str = ""
    ) -> Fields:
        hold = self.holds[hold_id]
        return self.transfer(
            int(hold["from"]),
            int(hold["to"]),
            amount,
            at,
            hold_id=hold_id,
            idem_key=idem_key,
            idem_fp=idem_fp,
        )

    def end(
        self, kind: str, hold_id: int, at: int, idem_key: str = "", idem_fp: str = ""
    ) -> Fields:
        """hold_voided or hold_expired: the whole amount goes back to the payer."""
        fields = dict(self.holds[hold_id], kind=kind, created_at_us=str(at), idem_key=idem_key)
        if idem_fp:
            fields["idem_fp"] = idem_fp
        return fields


async def append(redis: RedisClient, *records: Fields) -> list[str]:
    """XADDs the records in order; their entry ids."""
    ids = []
    for fields in records:
        entry_id = await redis.xadd(keyspace.txn_stream(BUCKET), cast(dict[Any, Any], fields))
        ids.append(cast(bytes, entry_id).decode())
    return ids


async def add_ledger_users(engine: AsyncEngine, *user_ids: int) -> None:
    """PostgreSQL users (the ledger's foreign keys); no Redis wallets."""
    async with engine.begin() as connection:
        rows = [{"id": u, "username": f"user{u}", "password_hash": "x"} for u in user_ids]
        await connection.execute(insert(User), rows)


async def hold_rows(engine: AsyncEngine) -> dict[int, dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(LedgerHold.__table__))
        return {row.id: dict(row._mapping) for row in rows}


async def hold_event_rows(engine: AsyncEngine) -> dict[int, dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(LedgerHoldEvent.__table__))
        return {row.hold_id: dict(row._mapping) for row in rows}
