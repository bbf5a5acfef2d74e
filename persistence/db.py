"""The one way the service opens the ledger database (PostgreSQL)."""

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings


def connect_database(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url, pool_size=settings.database_pool_size, pool_pre_ping=True
    )
