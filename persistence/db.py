"""The one way the service opens the database: PostgreSQL, or an SQLite file when embedded."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 10_000


def connect_database(settings: Settings) -> AsyncEngine:
    if settings.database_url.startswith("sqlite"):
        engine = create_async_engine(settings.database_url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        settings.database_url, pool_size=settings.database_pool_size, pool_pre_ping=True
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the writer writes; foreign keys are off unless asked.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
