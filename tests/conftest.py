"""Fixtures: each run claims its own Redis database and creates its own PostgreSQL database
(on the servers REDIS_URL and DATABASE_URL name, or on servers of the run's own started
from the wheels: tests/support/servers.py); each test starts with both empty.

With WALLET_TEST_SERVED=1 the `client` fixture talks to a real `wallet serve --workers 2`
on this run's databases. With WALLET_TEST_SENTINEL=1 the run's Redis is a deployment of its
own with a replica and Sentinel (tests/support/sentinel.py), named by a redis+sentinel://
URL; WALLET_REDIS_MIN_REPLICAS, read by every Settings, may then ask for the replica's
confirmation of every money request. With WALLET_TEST_CLUSTER=1 it is a Valkey Cluster of
its own, three primaries with a replica each (tests/support/cluster.py), named by a
redis+cluster:// URL.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from service.http.app import create_app
from service.http.metrics import create_metrics_app
from service.http.state import REDIS
from service.ledger.rebuild import ensure_transaction_counter
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.cluster import cluster_deployment
from tests.support.crossing import DEPOSIT_KOPECKS, USERS
from tests.support.faults.procs import Processes
from tests.support.helpers import add_users, fresh_database, fresh_redis
from tests.support.http_helpers import MakeClient
from tests.support.postgres_admin import postgres_admin
from tests.support.redis_claim import claimed_redis_database
from tests.support.sentinel import sentinel_deployment
from tests.support.served import Served, ServedClient, wallet_serve
from tests.support.servers import own_database, postgres_server, redis_server, scratch_dir

SERVED = os.environ.get("WALLET_TEST_SERVED") == "1"
SENTINEL = os.environ.get("WALLET_TEST_SENTINEL") == "1"
CLUSTER = os.environ.get("WALLET_TEST_CLUSTER") == "1"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if SENTINEL:
        with scratch_dir("sentinel") as directory, sentinel_deployment(directory) as deployment:
            yield deployment.url()
        return
    if CLUSTER:
        with (
            scratch_dir("cluster") as directory,
            cluster_deployment(directory, replicas=True) as cluster,
        ):
            yield cluster.url()
        return
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
async def redis_client(redis_url: str) -> AsyncIterator[RedisClient]:
    client = connect_redis(Settings(redis_url=redis_url))
    await fresh_redis(client)
    try:
        yield client
    finally:
        await client.aclose()


# The tests sign up hundreds of users from one address; the throttle's own tests set it.
TEST_SIGN_UP_MAX_PER_ADDRESS = 100_000


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Cheap password hashing, so that the tests can sign up hundreds of users."""
    return settings.model_copy(
        update={
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "sign_up_max_per_address": TEST_SIGN_UP_MAX_PER_ADDRESS,
        }
    )


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
) -> MakeClient:
    """Makes a client of an app with these settings changed (``make_client(name=value)``);
    Redis and the database start empty."""

    async def make(**update: Any) -> TestClient[web.Request, web.Application]:
        return await aiohttp_client(create_app(app_settings.model_copy(update=update)))

    return make


@pytest.fixture(scope="session")
def served(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served | None]:
    """With WALLET_TEST_SERVED=1: a real `wallet serve --workers 2`."""
    if not SERVED:
        yield None
        return
    log_path = tmp_path_factory.mktemp("served") / "wallet-serve.log"
    with wallet_serve(redis_url, database_url, log_path) as urls:
        yield urls


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    served: Served | None,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An HTTP client on a fresh app (or on the served one); Redis and the database were
    emptied by their fixtures."""
    if served is None:
        yield await aiohttp_client(create_app(app_settings))
        return
    served_client = ServedClient(served.base_url)
    try:
        yield cast(TestClient[web.Request, web.Application], served_client)
    finally:
        await served_client.close()


@pytest.fixture
async def metrics_client(
    aiohttp_client: AiohttpClient, client: object, served: Served | None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """GET /metrics of the process (or processes) ``client`` talks to: the metrics app on
    the API app's Redis in-process, or the served metrics listener."""
    if served is None:
        app = cast(TestClient[web.Request, web.Application], client).app
        yield await aiohttp_client(create_metrics_app(app[REDIS]))
        return
    served_client = ServedClient(served.metrics_url)
    try:
        yield cast(TestClient[web.Request, web.Application], served_client)
    finally:
        await served_client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SERVED:
        skip = pytest.mark.skip(reason="patches the app in-process; not possible against a server")
        for item in items:
            if "in_process_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def unmigrated_database(database_url: str) -> Iterator[str]:
    """An empty database on the run's server: `wallet migrate` never ran on it."""
    admin_dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = f"wallet_unmigrated_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(postgres_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts nothing by itself: the `wallet` processes and servers a test starts through
    it are stopped at the end, whatever the outcome (tests/support/faults/procs.py)."""
    registry = Processes(tmp_path)
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def money(redis_client: RedisClient, settings: Settings) -> MoneyScripts:
    return MoneyScripts(redis_client, settings)


SEVERAL_BUCKETS = 3


@pytest.fixture
async def several_buckets(
    monkeypatch: pytest.MonkeyPatch, redis_client: RedisClient, db_engine: AsyncEngine
) -> int:
    """SEVERAL_BUCKETS buckets for this test (user u in bucket u % 3), each counter started
    in an epoch of its own, as `wallet serve` starts them on a new system."""
    monkeypatch.setattr(keyspace, "BUCKETS", SEVERAL_BUCKETS)
    await redis_client.delete(keyspace.txn_seq(0))  # fresh_redis started it outside any epoch
    assert await ensure_transaction_counter(redis_client, db_engine)
    return SEVERAL_BUCKETS


@pytest.fixture
async def funded(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, several_buckets: int
) -> MoneyScripts:
    """Users 1..9 over the three buckets, each with DEPOSIT_KOPECKS (tests/support/crossing.py)."""
    await add_users(db_engine, money, USERS)
    for user_id in USERS:
        await money.deposit(user_id, DEPOSIT_KOPECKS)
    return money
