"""Fixtures: each run claims its own Redis database and creates its own PostgreSQL database;
each test starts with both empty.

With WALLET_TEST_EMBEDDED=1 the same tests run on the embedded mode's backends instead:
the in-process Redis (fakeredis) and an SQLite ledger file. With WALLET_TEST_SERVED=1 the
`client` fixture talks to a real `wallet serve --workers 2` on this run's databases.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from persistence.db import connect_database
from persistence.migrate import migrate
from service.http.app import create_app
from service.redis.client import MEMORY_URL, connect_redis
from service.redis.money import MoneyScripts
from service.settings import Settings
from tests.support.helpers import fresh_database, fresh_redis
from tests.support.postgres_admin import postgres_admin
from tests.support.redis_claim import claimed_redis_database
from tests.support.served import ServedClient, wallet_serve

REDIS_HOST_URL = os.environ.get("WALLET_TEST_REDIS", "redis://127.0.0.1:6379")
# The server and an existing database to connect to while creating this run's own database.
POSTGRES_ADMIN_DSN = os.environ.get("WALLET_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
EMBEDDED = os.environ.get("WALLET_TEST_EMBEDDED") == "1"
SERVED = os.environ.get("WALLET_TEST_SERVED") == "1"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if EMBEDDED:
        yield MEMORY_URL
        return
    with claimed_redis_database(REDIS_HOST_URL) as url:
        yield url


async def _migrate(url: str) -> None:
    engine = create_async_engine(url)
    await migrate(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of this run's own, migrated once; dropped at the end."""
    if EMBEDDED:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.sqlite3'}"
        asyncio.run(_migrate(url))
        yield url
        return
    name = f"wallet_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_admin(POSTGRES_ADMIN_DSN, f'CREATE DATABASE "{name}"'))
    server = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].removeprefix("postgresql://")
    url = f"postgresql+asyncpg://{server}/{name}"
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(
            postgres_admin(POSTGRES_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url)


@pytest.fixture
async def db_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = connect_database(settings)
    await fresh_database(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url))
    await fresh_redis(client)
    try:
        yield client
    finally:
        await client.aclose()
        await client.connection_pool.disconnect()


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Cheap password hashing, so that the tests can sign up hundreds of users."""
    return settings.model_copy(update={"argon2_time_cost": 1, "argon2_memory_kib": 1024})


@pytest.fixture(scope="session")
def served_url(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str | None]:
    """With WALLET_TEST_SERVED=1: the URL of a real `wallet serve --workers 2`."""
    if not SERVED:
        yield None
        return
    log_path = tmp_path_factory.mktemp("served") / "wallet-serve.log"
    with wallet_serve(redis_url, database_url, log_path) as url:
        yield url


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: Redis,
    db_engine: AsyncEngine,
    served_url: str | None,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An HTTP client on a fresh app (or on the served one); Redis and the database were
    emptied by their fixtures."""
    if served_url is None:
        yield await aiohttp_client(create_app(app_settings))
        return
    served = ServedClient(served_url)
    try:
        yield cast(TestClient[web.Request, web.Application], served)
    finally:
        await served.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SERVED:
        skip = pytest.mark.skip(reason="patches the app in-process; not possible against a server")
        for item in items:
            if "in_process_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def money(redis_client: Redis, settings: Settings) -> MoneyScripts:
    return MoneyScripts(redis_client, settings.idempotency_ttl_s)
