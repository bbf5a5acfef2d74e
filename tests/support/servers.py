"""The servers a test run or a benchmark uses.

With ``REDIS_URL`` and ``DATABASE_URL`` set, the servers they name (a run then claims a
Redis database number of its own and creates a PostgreSQL database of its own there).
Without them, a Valkey and a PostgreSQL started from the wheels for this run alone
(service/engines/), so a machine with only Python runs the suite.
"""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from persistence.migrate import migrate_database
from service.engines.postgres import start_postgres
from service.engines.valkey import start_valkey
from service.settings import Settings
from tests.support.postgres_admin import postgres_admin


@contextmanager
def scratch_dir(what: str) -> Iterator[Path]:
    # Not pytest's tmp_path: every pytest start resets /tmp/pytest-of-<user> to 0700,
    # which locks out PostgreSQL's own system user when the run is root's.
    directory = Path(tempfile.mkdtemp(prefix=f"wallet-test-{what}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """``redis://host:port`` of the server to use, without a database number."""
    given = os.environ.get("REDIS_URL")
    if given:
        parts = urlsplit(given)
        yield f"{parts.scheme}://{parts.netloc}"
        return
    with scratch_dir("valkey") as directory, start_valkey(directory) as valkey:
        yield valkey.url.rsplit("/", 1)[0]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A libpq DSN of a database to connect to while creating and dropping others."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given.replace("postgresql+asyncpg://", "postgresql://", 1)
        return
    with scratch_dir("postgres") as directory, start_postgres(directory) as postgres:
        yield postgres.dsn


@contextmanager
def own_database(admin_dsn: str, prefix: str = "wallet_test") -> Iterator[str]:
    """A migrated database of one's own on the server of ``admin_dsn``, dropped at the end;
    yields its ``postgresql+asyncpg://`` URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    server = admin_dsn.removeprefix("postgresql://").rsplit("/", 1)[0]
    url = f"postgresql+asyncpg://{server}/{name}"
    try:
        asyncio.run(migrate_database(Settings(database_url=url)))
        yield url
    finally:
        asyncio.run(postgres_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
