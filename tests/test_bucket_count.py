"""The count of buckets, fixed when a deployment is created (service/ledger/bucket_count.py),
against real Redis and PostgreSQL: recorded by the first start, refused when it differs."""

import asyncio

import pytest
from click.testing import CliRunner
from pytest_aiohttp import AiohttpClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.cli.main import main
from service.http.app import create_app
from service.ledger.bucket_count import BucketCountMismatch, check_bucket_count
from service.redis import keyspace
from service.redis.types import RedisClient
from service.settings import Settings


async def recorded_in_postgres(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT buckets FROM deployment"))).scalars())


async def record_in_postgres(engine: AsyncEngine, buckets: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(f"INSERT INTO deployment (id, buckets) VALUES (1, {buckets})")
        )


async def test_the_first_start_records_the_count_in_both(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    assert await recorded_in_postgres(db_engine) == []
    await check_bucket_count(redis_client, db_engine, 1)
    assert await recorded_in_postgres(db_engine) == [1]
    assert await redis_client.get(keyspace.BUCKET_COUNT) == b"1"
    # A Redis that lost its data takes the count again.
    await redis_client.delete(keyspace.BUCKET_COUNT)
    await check_bucket_count(redis_client, db_engine, 1)
    assert await redis_client.get(keyspace.BUCKET_COUNT) == b"1"


async def test_a_later_start_only_reads(
    redis_client: RedisClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    """A database answering read-only (a standby during a failover window) does not stop
    a process once the count is recorded."""
    await check_bucket_count(redis_client, db_engine, 1)
    read_only = create_async_engine(
        settings.database_url,
        connect_args={"server_settings": {"default_transaction_read_only": "on"}},
    )
    try:
        await check_bucket_count(redis_client, read_only, 1)
        with pytest.raises(BucketCountMismatch):
            await check_bucket_count(redis_client, read_only, 2)
    finally:
        await read_only.dispose()


async def test_another_count_than_the_deployments_is_refused(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    await record_in_postgres(db_engine, 16)
    with pytest.raises(BucketCountMismatch, match="created with 16 buckets") as refused:
        await check_bucket_count(redis_client, db_engine, 1)
    assert "Set WALLET_BUCKETS=16" in str(refused.value)
    assert await redis_client.get(keyspace.BUCKET_COUNT) is None  # nothing written
    assert await recorded_in_postgres(db_engine) == [16]


async def test_a_redis_of_another_deployment_is_refused(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    await redis_client.set(keyspace.BUCKET_COUNT, 4)
    with pytest.raises(BucketCountMismatch, match="Redis records 4 buckets"):
        await check_bucket_count(redis_client, db_engine, 1)


async def test_the_api_does_not_start_with_another_count(
    aiohttp_client: AiohttpClient, app_settings: Settings, db_engine: AsyncEngine
) -> None:
    await record_in_postgres(db_engine, 2)
    with pytest.raises(BucketCountMismatch, match="created with 2 buckets"):
        await aiohttp_client(create_app(app_settings))


async def test_commands_stop_with_one_line_on_another_count(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    await record_in_postgres(db_engine, 2)
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
    for command in (["reconcile"], ["replay", "--from", "1"], ["rebuild"]):
        result = await asyncio.to_thread(CliRunner().invoke, main, command, env=env)
        assert result.exit_code == 1, (command, result.output)
        assert "created with 2 buckets" in result.output, (command, result.output)


async def test_a_deployment_of_several_buckets_starts_and_records_its_count(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyspace, "BUCKETS", keyspace.BUCKETS)  # put back after the test
    await aiohttp_client(create_app(app_settings.model_copy(update={"buckets": 3})))
    assert keyspace.BUCKETS == 3
    assert await recorded_in_postgres(db_engine) == [3]
    assert await redis_client.get(keyspace.BUCKET_COUNT) == b"3"
    # Every bucket's counter was started, each in an epoch of its own.
    seqs = [int(await redis_client.get(keyspace.txn_seq(b)) or -1) for b in range(3)]
    assert len({seq // 10**9 for seq in seqs}) == 3


def test_more_buckets_than_the_limit_are_refused() -> None:
    result = CliRunner().invoke(main, ["reconcile"], env={"WALLET_BUCKETS": "1025"})
    assert result.exit_code == 1
    assert "WALLET_BUCKETS: " in result.output
    assert "less than or equal to 1024" in result.output
