"""Each epoch of transaction ids records the bucket it was taken for, so any id names the
bucket that issued it (service/ledger/id_buckets.py, migration 0009)."""

import logging

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from persistence.migrate import migrate
from persistence.txn_id_epochs import take_txn_id_epoch
from service.domain.limits import MAX_BUCKETS, TXN_IDS_PER_EPOCH
from service.ledger.id_buckets import IdBuckets
from service.redis import keyspace
from tests.conftest import SEVERAL_BUCKETS
from tests.support.helpers import next_txn_id_epoch

E = TXN_IDS_PER_EPOCH
# Nothing listens there: a query would fail.
NO_DATABASE = "postgresql+asyncpg://127.0.0.1:1/nowhere"


@pytest.fixture
def buckets(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(keyspace, "BUCKETS", SEVERAL_BUCKETS)
    return SEVERAL_BUCKETS


async def _recorded(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT epoch, bucket FROM txn_id_epoch_buckets"))
        return {epoch: bucket for epoch, bucket in rows}


async def test_each_epoch_taken_records_its_bucket_and_names_its_ids_bucket(
    db_engine: AsyncEngine, buckets: int
) -> None:
    epochs = [await take_txn_id_epoch(db_engine, at_least_id=0, bucket=b) for b in range(buckets)]
    assert epochs == [1, 2, 3]
    assert await _recorded(db_engine) == {0: 0, 1: 0, 2: 1, 3: 2}  # 0: fresh_database's
    id_buckets = IdBuckets(db_engine)
    for bucket, epoch in enumerate(epochs):
        for txn_id in (epoch * E + 1, (epoch + 1) * E - 1):  # its first and last ids
            assert await id_buckets.bucket_of_id(txn_id) == bucket, txn_id


async def test_a_found_epoch_is_answered_from_memory_after(
    db_engine: AsyncEngine, buckets: int
) -> None:
    epoch = await take_txn_id_epoch(db_engine, at_least_id=0, bucket=2)
    id_buckets = IdBuckets(db_engine)
    assert await id_buckets.bucket_of_id(epoch * E + 1) == 2
    async with db_engine.begin() as connection:
        await connection.execute(text("TRUNCATE txn_id_epoch_buckets"))
    assert await id_buckets.bucket_of_id(epoch * E + 5) == 2


async def test_an_id_of_an_epoch_without_a_row_names_no_bucket(
    db_engine: AsyncEngine, buckets: int
) -> None:
    """An epoch handed out before migration 0009, and one not handed out yet."""
    async with db_engine.begin() as connection:
        await connection.execute(text("UPDATE txn_id_epoch SET next_epoch = 5"))
    id_buckets = IdBuckets(db_engine)
    assert await id_buckets.bucket_of_id(4 * E + 1) is None
    assert await id_buckets.bucket_of_id(5 * E + 1) is None


async def test_an_epoch_recorded_for_a_bucket_the_deployment_lacks_names_none_and_is_logged(
    db_engine: AsyncEngine, buckets: int, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = await take_txn_id_epoch(db_engine, at_least_id=0, bucket=buckets)
    with caplog.at_level(logging.ERROR, logger="wallet.id_buckets"):
        assert await IdBuckets(db_engine).bucket_of_id(epoch * E + 1) is None
    assert f"recorded for bucket {buckets}" in caplog.text


async def test_with_one_bucket_every_id_is_bucket_0s_without_a_query() -> None:
    assert keyspace.BUCKETS == 1
    engine = create_async_engine(NO_DATABASE)
    try:
        id_buckets = IdBuckets(engine)
        assert [await id_buckets.bucket_of_id(i) for i in (1, 7 * E + 1)] == [0, 0]
    finally:
        await engine.dispose()


async def test_a_bucket_out_of_range_hands_out_no_epoch(db_engine: AsyncEngine) -> None:
    """The epoch and its bucket commit together, or neither does."""
    with pytest.raises(IntegrityError, match="txn_id_epoch_buckets_bucket_range"):
        await take_txn_id_epoch(db_engine, at_least_id=0, bucket=MAX_BUCKETS)
    assert await next_txn_id_epoch(db_engine) == 1
    assert await _recorded(db_engine) == {0: 0}


def _downgrade_to_0008(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", "persistence:migrations")
    config.attributes["connection"] = connection
    command.downgrade(config, "0008")


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migration_0009_downgrades_and_upgrades(db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to_0008)
        assert "txn_id_epoch_buckets" not in await connection.run_sync(_tables)
    await migrate(db_engine)
    assert await _recorded(db_engine) == {}  # epochs handed out before it have no row
    assert await take_txn_id_epoch(db_engine, at_least_id=0, bucket=1) == 1
    assert await _recorded(db_engine) == {1: 1}
