"""Brings the schema to the newest Alembic revision (``wallet migrate``), and tells a
command that needs the schema whether it is there."""

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from service.settings import Settings

# Where alembic records the revision applied (its default name).
_VERSION_TABLE = "alembic_version"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", "persistence:migrations")
    return config


def _upgrade(connection: Connection) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current_revision(connection: Connection) -> str | None:
    # alembic's own table, read here rather than through its MigrationContext, which logs
    # two lines every time: every worker checks at start.
    if not inspect(connection).has_table(_VERSION_TABLE):
        return None
    revision: str | None = connection.execute(
        text(f"SELECT version_num FROM {_VERSION_TABLE}")
    ).scalar()
    return revision


async def schema_problem(engine: AsyncEngine) -> str | None:
    """None when the database is at the newest revision; else what is wrong, in one line
    that says what to run. Outages raise (the caller decides whether to wait)."""
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revision)
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if current == head:
        return None
    found = "no schema" if current is None else f"schema revision {current}, not {head}"
    return f"the database has {found}: run `wallet migrate` first"


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def migrate_database(settings: Settings) -> None:
    """``migrate`` on a connection of its own to DATABASE_URL."""
    engine = connect_database(settings)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
