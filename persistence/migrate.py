"""Brings the schema to the newest Alembic revision (``wallet migrate``)."""

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from service.settings import Settings


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", "persistence:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


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
