"""Writes stream records into the ``transactions`` table, idempotently.

A record written twice is stored once: every insert is ``ON CONFLICT (id) DO NOTHING`` on
the transaction id the Lua script assigned. A skipped row must be the same transaction:
an id the ledger holds for another one (Redis lost its counter) is refused, so the writer
dead-letters it instead of dropping money silently.

On PostgreSQL a batch is one statement whatever its size: ``INSERT INTO transactions SELECT
* FROM unnest($1::bigint[], $2::varchar[], ...) ON CONFLICT (id) DO NOTHING``, one array
parameter per column. It was measured against a multi-row ``INSERT ... VALUES`` and against
``COPY`` into a staging table followed by ``INSERT ... SELECT`` and kept because it was the
fastest (docs/ledger.md).

Hold records (docs/holds.md) go in the same database transaction: a ``hold_created``
record is a ``holds`` row, a ``hold_voided`` or ``hold_expired`` record a ``hold_events``
row, and a capture (a transfer with ``hold_id``) is its ``transactions`` row plus its
``captured`` event (across buckets, its reservation's row plus the event). They are
inserted the same way, ``ON CONFLICT DO NOTHING`` on the hold id, and a skipped row must be
the same record too: a hold id stored for another hold, or a hold's end stored as another
event, is refused like an id collision.

The sides of a transfer across buckets (service/domain/crossings.py) go the same way into
``transfer_reservations``, ``transfer_credits`` and ``transfer_ends``, keyed by the
transfer's id.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import String, Text, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from persistence.models import (
    Base,
    LedgerHold,
    LedgerHoldEvent,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from service.domain.crossings import CrossingRecord
from service.domain.holds import HoldEvent
from service.domain.records import StreamRecord, capture_event_row
from service.domain.transactions import Transaction

logger = logging.getLogger("wallet.writer")


def _array_type(column_type: TypeEngine[Any]) -> postgresql.ARRAY[Any]:
    # text[], not varchar(64)[]: an explicit cast to varchar(n) silently truncates a longer
    # value, whereas the INSERT's own assignment to the column refuses it (SQLSTATE 22001).
    return postgresql.ARRAY(Text() if isinstance(column_type, String) else column_type)


def _columns(model: type[Base]) -> list[str]:
    return [column.name for column in model.__table__.columns]


def _unnest_insert(model: type[Base], key: str) -> Any:
    """``INSERT INTO <table> SELECT * FROM unnest(<one array per column>) ON CONFLICT
    (<key>) DO NOTHING``: one statement for any number of rows, compiled once."""
    columns = _columns(model)
    unnest = (
        func.unnest(
            *(
                bindparam(column.name, type_=_array_type(column.type))
                for column in model.__table__.columns
            )
        )
        .table_valued(*columns)
        .render_derived()
    )
    return (
        postgresql.insert(model)
        .from_select(columns, select(*(unnest.c[name] for name in columns)))
        .on_conflict_do_nothing(index_elements=[key])
    )


_COLUMNS = _columns(LedgerTransaction)
_POSTGRES_INSERT = _unnest_insert(LedgerTransaction, "id")
_HOLD_COLUMNS = _columns(LedgerHold)
_HOLDS_INSERT = _unnest_insert(LedgerHold, "id")
_EVENT_COLUMNS = _columns(LedgerHoldEvent)
_EVENTS_INSERT = _unnest_insert(LedgerHoldEvent, "hold_id")


class _SideTable:
    """A table of one side of transfers across buckets: its insert and how a stored row is
    told to be the same record."""

    def __init__(self, model: type[Base], key: str, same: tuple[str, ...]) -> None:
        self.model, self.key, self.same = model, key, same
        self.columns = _columns(model)
        self.insert = _unnest_insert(model, key)


# In this order, after the tables above, rows in key order: two writers cannot deadlock.
_SIDE_TABLES = {
    "transfer_reservations": _SideTable(
        LedgerTransferReservation,
        "id",
        ("from_user_id", "to_user_id", "amount_kopecks", "created_at", "refund_of"),
    ),
    "transfer_credits": _SideTable(
        LedgerTransferCredit,
        "transfer_id",
        ("from_user_id", "to_user_id", "amount_kopecks", "credited_at", "refund_of"),
    ),
    "transfer_ends": _SideTable(
        LedgerTransferEnd, "transfer_id", ("outcome", "from_user_id", "amount_kopecks", "at")
    ),
}


async def insert_transactions(
    connection: AsyncConnection, entries: Sequence[tuple[str, Transaction]]
) -> int:
    """Inserts ``(stream entry id, transaction)`` pairs; returns the rows actually inserted.

    Rows whose transaction id is already stored are skipped. Runs inside the caller's
    transaction. Rows go in transaction id order, so two writers inserting overlapping
    batches take their row locks in the same order and cannot deadlock.
    """
    if not entries:
        return 0
    rows = sorted((txn.ledger_row(entry_id) for entry_id, txn in entries), key=lambda r: r["id"])
    arrays = {name: [row[name] for row in rows] for name in _COLUMNS}
    inserted: int = (await connection.execute(_POSTGRES_INSERT, arrays)).rowcount
    if inserted < len(rows):
        await _refuse_id_collisions(connection, rows)
    return inserted


class IdCollision(Exception):
    """The ledger holds another record under a key that came again from the stream: Redis
    lost its counter and issued the id twice, or a hold got a second, different end.
    Skipping the row would lose money (or a hold's history)."""


_SAME_TRANSACTION = ("kind", "from_user_id", "to_user_id", "amount_kopecks", "created_at")
_SAME_HOLD = ("from_user_id", "to_user_id", "amount_kopecks", "created_at", "expires_at")
_SAME_HOLD_EVENT = ("event", "at", "amount_kopecks", "transaction_id")


async def _refuse_conflicts(
    connection: AsyncConnection,
    model: type[Base],
    key: str,
    same: tuple[str, ...],
    rows: list[dict[str, Any]],
    what: str,  # the message, with {} for the key
) -> None:
    """Some keys were stored already: fine when it is the same record delivered again (a
    retry, a claim, a replay), an IdCollision when the stored one is another. Every
    incoming row is compared, so two different rows under one key in a batch are caught
    too."""
    key_column = getattr(model, key)
    columns = [key_column, *(getattr(model, name) for name in same)]
    keys = sorted({row[key] for row in rows})
    stored = {
        row[0]: row
        for row in await connection.execute(select(*columns).where(key_column.in_(keys)))
    }
    for incoming in rows:
        row = stored.get(incoming[key])
        if row is not None and any(getattr(row, name) != incoming[name] for name in same):
            raise IdCollision(
                what.format(incoming[key]) + f" (stream entry {incoming['stream_entry_id']})"
            )


async def _refuse_id_collisions(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await _refuse_conflicts(
        connection,
        LedgerTransaction,
        "id",
        _SAME_TRANSACTION,
        rows,
        "transaction id {} is already in the ledger for another transaction",
    )


async def _insert_rows(
    connection: AsyncConnection,
    statement: Any,
    columns: list[str],
    rows: list[dict[str, Any]],
    refuse_conflicts: Callable[[list[dict[str, Any]]], Awaitable[None]],
) -> int:
    if not rows:
        return 0
    arrays = {name: [row[name] for row in rows] for name in columns}
    inserted: int = (await connection.execute(statement, arrays)).rowcount
    if inserted < len(rows):
        await refuse_conflicts(rows)
    return inserted


async def insert_records(
    connection: AsyncConnection, entries: Sequence[tuple[str, StreamRecord]]
) -> int:
    """Inserts ``(stream entry id, record)`` pairs, transactions and hold events alike;
    returns the rows actually inserted (a capture is two: its transaction and its
    ``captured`` event). Runs inside the caller's transaction.

    Tables go in one order (transactions, holds, hold_events, then the sides of transfers
    across buckets) and rows in key order within each, so overlapping batches of two
    writers cannot deadlock; a capture's transaction goes in before its event, which
    refers to it.
    """
    transactions: list[tuple[str, Transaction]] = []
    holds: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    sides: dict[str, list[dict[str, Any]]] = {table: [] for table in _SIDE_TABLES}
    for entry_id, record in entries:
        if isinstance(record, Transaction):
            transactions.append((entry_id, record))
            if record.hold_id is not None:
                events.append(capture_event_row(record, entry_id))
        elif isinstance(record, HoldEvent):
            table, row = record.ledger_row(entry_id)
            (holds if table == "holds" else events).append(row)
        else:
            assert isinstance(record, CrossingRecord), record
            table, row = record.ledger_row(entry_id)
            sides[table].append(row)
            if record.hold_id is not None and record.kind == "transfer_out":
                events.append(capture_event_row(record, entry_id))
    inserted = await insert_transactions(connection, transactions) if transactions else 0
    holds.sort(key=lambda row: row["id"])
    events.sort(key=lambda row: row["hold_id"])

    async def refuse_holds(rows: list[dict[str, Any]]) -> None:
        await _refuse_conflicts(
            connection,
            LedgerHold,
            "id",
            _SAME_HOLD,
            rows,
            "hold id {} is already in the ledger for another hold",
        )

    async def refuse_events(rows: list[dict[str, Any]]) -> None:
        await _refuse_conflicts(
            connection,
            LedgerHoldEvent,
            "hold_id",
            _SAME_HOLD_EVENT,
            rows,
            "hold {} has already ended otherwise in the ledger",
        )

    inserted += await _insert_rows(connection, _HOLDS_INSERT, _HOLD_COLUMNS, holds, refuse_holds)
    inserted += await _insert_rows(
        connection, _EVENTS_INSERT, _EVENT_COLUMNS, events, refuse_events
    )
    for name, side in _SIDE_TABLES.items():
        rows = sorted(sides[name], key=lambda row: row[side.key])

        async def refuse(rows: list[dict[str, Any]], side: _SideTable = side) -> None:
            await _refuse_conflicts(
                connection,
                side.model,
                side.key,
                side.same,
                rows,
                f"transfer {{}} is already in {side.model.__tablename__} as another record",
            )

        inserted += await _insert_rows(connection, side.insert, side.columns, rows, refuse)
    return inserted


def ledger_row_count(record: StreamRecord) -> int:
    """The rows ``insert_records`` makes of a record: one, or two for a capture (its
    transaction, or its reservation across buckets, and its ``captured`` event)."""
    if isinstance(record, CrossingRecord):
        return 2 if record.hold_id is not None and record.kind == "transfer_out" else 1
    return 2 if isinstance(record, Transaction) and record.hold_id is not None else 1


def is_data_error(error: BaseException) -> bool:
    """True when the database refused the rows themselves, so retrying cannot help.

    Constraint violations (SQLSTATE class 23), data exceptions such as a string too long
    (class 22) and a value the driver cannot encode (asyncpg raises a ValueError). A lost
    connection, a timeout or a server that is down is not a data error.
    """
    if isinstance(error, IntegrityError | DataError | IdCollision):
        return True
    if not isinstance(error, DBAPIError) or error.connection_invalidated:
        return False
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if isinstance(code, str) and code[:2] in ("22", "23"):
        return True
    return isinstance(error.orig, ValueError) or isinstance(
        getattr(error.orig, "__cause__", None), ValueError
    )


def _reason(error: Exception) -> str:
    """The database's own message, without the SQL and the parameters."""
    message = str(error.orig if isinstance(error, DBAPIError) else error)
    return message.splitlines()[0] if message else type(error).__name__


async def insert_isolating(
    engine: AsyncEngine, entries: Sequence[tuple[str, StreamRecord]]
) -> tuple[int, list[tuple[str, str]]]:
    """Inserts the batch in one transaction; if the database refuses it for a data reason,
    inserts it again row by row (one savepoint each) to single out the rows at fault.

    Returns the rows inserted and ``(stream entry id, reason)`` for every refused row.
    Any other error propagates: nothing is known to be stored then.
    """
    try:
        async with engine.begin() as connection:
            return await insert_records(connection, entries), []
    except Exception as error:
        if not is_data_error(error):
            raise
        logger.warning(
            "the database refused a batch of %d, isolating the rows at fault: %s",
            len(entries),
            _reason(error),
        )
    inserted = 0
    refused: list[tuple[str, str]] = []
    async with engine.begin() as connection:
        for entry_id, record in entries:
            try:
                async with connection.begin_nested():
                    inserted += await insert_records(connection, [(entry_id, record)])
            except Exception as error:
                if not is_data_error(error):
                    raise
                refused.append((entry_id, f"refused by the database: {_reason(error)}"))
    return inserted, refused
