"""Fixtures: each run claims its own Redis database and creates its own PostgreSQL database
(on the servers REDIS_URL and DATABASE_URL name, or on servers of the run's own started
from the wheels: tests/support/servers.py); each test starts with both empty.

With WALLET_TEST_SERVED=1 the `client` fixture talks to a real `wallet serve --workers 2`
on this run's databases.
"""

import os
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from service.http.app import create_app
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.settings import Settings
from tests.support.helpers import fresh_database, fresh_redis
from tests.support.redis_claim import claimed_redis_database
from tests.support.served import ServedClient, wallet_serve
from tests.support.servers import own_database, postgres_server, redis_server

SERVED = os.environ.get("WALLET_TEST_SERVED") == "1"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as server, claimed_redis_database(server) as url:
        yield url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this run's own, migrated once; dropped at the end."""
    with postgres_server() as admin_dsn, own_database(admin_dsn) as url:
        yield url


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
    return MoneyScripts(redis_client, settings)
