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
"""

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, Text, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from persistence.models import LedgerTransaction
from service.domain.transactions import Transaction

logger = logging.getLogger("wallet.writer")

_TABLE = LedgerTransaction.__table__
_COLUMNS = [column.name for column in _TABLE.columns]


def _array_type(column_type: TypeEngine[Any]) -> postgresql.ARRAY[Any]:
    # text[], not varchar(64)[]: an explicit cast to varchar(n) silently truncates a longer
    # value, whereas the INSERT's own assignment to the column refuses it (SQLSTATE 22001).
    return postgresql.ARRAY(Text() if isinstance(column_type, String) else column_type)


_UNNEST = (
    func.unnest(
        *(bindparam(column.name, type_=_array_type(column.type)) for column in _TABLE.columns)
    )
    .table_valued(*_COLUMNS)
    .render_derived()
)
_POSTGRES_INSERT = (
    postgresql.insert(LedgerTransaction)
    .from_select(_COLUMNS, select(*(_UNNEST.c[name] for name in _COLUMNS)))
    .on_conflict_do_nothing(index_elements=["id"])
)


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
    """The ledger holds another transaction under an id that came again from the stream:
    Redis lost its counter and issued the id twice. Skipping the row would lose money."""


_SAME_TRANSACTION = ("kind", "from_user_id", "to_user_id", "amount_kopecks", "created_at")


async def _refuse_id_collisions(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Some ids were stored already: fine when it is the same transaction delivered again
    (a retry, a claim, a replay), an IdCollision when the stored one is another."""
    by_id = {row["id"]: row for row in rows}
    columns = [getattr(LedgerTransaction, name) for name in ("id", *_SAME_TRANSACTION)]
    stored = await connection.execute(select(*columns).where(LedgerTransaction.id.in_(list(by_id))))
    for row in stored:
        incoming = by_id[row.id]
        if any(getattr(row, name) != incoming[name] for name in _SAME_TRANSACTION):
            raise IdCollision(
                f"transaction id {row.id} is already in the ledger for another transaction"
                f" (stream entry {incoming['stream_entry_id']})"
            )


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
    engine: AsyncEngine, entries: Sequence[tuple[str, Transaction]]
) -> tuple[int, list[tuple[str, str]]]:
    """Inserts the batch in one transaction; if the database refuses it for a data reason,
    inserts it again row by row (one savepoint each) to single out the rows at fault.

    Returns the rows inserted and ``(stream entry id, reason)`` for every refused row.
    Any other error propagates: nothing is known to be stored then.
    """
    try:
        async with engine.begin() as connection:
            return await insert_transactions(connection, entries), []
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
        for entry_id, txn in entries:
            try:
                async with connection.begin_nested():
                    inserted += await insert_transactions(connection, [(entry_id, txn)])
            except Exception as error:
                if not is_data_error(error):
                    raise
                refused.append((entry_id, f"refused by the database: {_reason(error)}"))
    return inserted, refused
