"""Process fixtures for the fault tests.

Tests start `wallet serve`, `wallet writer` and, when they stop or restart a server, Redis
and PostgreSQL instances of their own (own port, own data directory under ``tmp_path``)
through ``processes`` (tests/conftest.py), which stops every one of them whatever the
outcome of the test. ``shared_servers`` gives the run's claimed Redis database and
PostgreSQL database, emptied, for the tests that stop neither server.
"""

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.redis.types import RedisClient
from tests.support.faults.procs import (
    PostgresServer,
    Processes,
    RedisServer,
)


@pytest.fixture
def shared_servers(
    redis_client: RedisClient, db_engine: AsyncEngine, redis_url: str, database_url: str
) -> tuple[str, str]:
    """(REDIS_URL, DATABASE_URL) of the shared servers, both emptied by their fixtures."""
    return redis_url, database_url


@pytest.fixture
async def own_redis(processes: Processes) -> RedisServer:
    """A Redis of the test's own: append-only file, appendfsync always; ``processes``
    stops it."""
    server = processes.redis()
    server.start()
    await server.wait_ready()
    return server


@pytest.fixture
async def own_postgres(processes: Processes) -> PostgresServer:
    """A PostgreSQL cluster of the test's own, running; ``processes`` stops it."""
    server = processes.postgres()
    server.init()
    server.start()
    await server.wait_ready()
    return server
