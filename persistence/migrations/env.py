"""Alembic environment, for `wallet migrate` and for the `alembic` command (alembic.ini).

`wallet migrate` (persistence/migrate.py) hands over its connection. The `alembic` command
has none: it connects to DATABASE_URL from the environment, as `wallet migrate` does (the
same Settings, the same engine); offline (`alembic upgrade head --sql`) it connects to
nothing and prints the SQL for that URL's dialect.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from persistence.db import connect_database
from persistence.models import Base
from service.settings import Settings


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_database_url() -> None:
    engine = connect_database(Settings())
    try:
        # One transaction, as `wallet migrate` runs them (PostgreSQL's DDL is transactional).
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _print_sql() -> None:
    context.configure(
        url=Settings().database_url,
        target_metadata=Base.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


handed_over = context.config.attributes.get("connection")
if isinstance(handed_over, Connection):
    _run_on(handed_over)
else:
    # The alembic command: its logging is alembic.ini's.
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _print_sql()
    else:
        asyncio.run(_run_on_database_url())
