from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.migrate import migrate
from persistence.models import Base
from tests.support.helpers import next_txn_id_epoch


async def test_migrations_build_the_models_schema_and_rerun_as_a_no_op(
    db_engine: AsyncEngine,
) -> None:
    await migrate(db_engine)
    async with db_engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        indexes = await connection.run_sync(
            lambda c: {i["name"] for i in inspect(c).get_indexes("transactions")}
        )
    assert tables == {"alembic_version", *Base.metadata.tables}
    assert {i.name for i in Base.metadata.tables["transactions"].indexes} <= indexes


def _downgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", "persistence:migrations")
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _downgrade_to_0001(connection: Connection) -> None:
    _downgrade_to(connection, "0001")


async def test_the_epoch_table_counts_epoch_0_as_handed_out_when_ids_were_issued(
    db_engine: AsyncEngine,
) -> None:
    """An older version issued ids from 1 up, all in epoch 0, without recording it."""
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to_0001)
    await migrate(db_engine)
    assert await next_txn_id_epoch(db_engine) == 0  # a new system: nothing issued yet
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to_0001)
        await connection.execute(
            text("INSERT INTO users (id, username, password_hash) VALUES (1, 'ann', 'x')")
        )
        await connection.execute(
            text(
                "INSERT INTO transactions (id, kind, to_user_id, amount_kopecks, created_at,"
                " to_balance_after_kopecks, stream_entry_id) VALUES (41, 'deposit', 1, 5, now(),"
                " 5, '1-0')"
            )
        )
    await migrate(db_engine)
    # Old epoch 0 (ids below 10^12) is the epochs 0..999 of 10^9 (migration 0004).
    assert await next_txn_id_epoch(db_engine) == 1000


def _model_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


def _check_constraint_names(connection: Connection, table: str) -> set[str | None]:
    return {check["name"] for check in inspect(connection).get_check_constraints(table)}


async def test_the_migrations_build_exactly_the_models(db_engine: AsyncEngine) -> None:
    """Tables, columns, types, nullability, indexes and foreign keys as persistence/models.py
    declares them (alembic's autogenerate finds nothing to add or drop)."""
    await migrate(db_engine)
    async with db_engine.connect() as connection:
        assert await connection.run_sync(_model_differences) == []
        for name, table in Base.metadata.tables.items():
            stored = await connection.run_sync(_check_constraint_names, name)
            declared = {
                c.name for c in table.constraints if isinstance(c, CheckConstraint) and c.name
            }
            assert stored == declared, name


async def test_the_kind_shape_admits_refunds_and_captures_only_in_their_shapes(
    db_engine: AsyncEngine,
) -> None:
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash)"
                " VALUES (1, 'ann', 'x'), (2, 'bob', 'x')"
            )
        )
    columns = (
        "id, kind, from_user_id, to_user_id, amount_kopecks, created_at,"
        " from_balance_after_kopecks, to_balance_after_kopecks, stream_entry_id,"
        " hold_id, refund_of"
    )
    good = [
        "1, 'deposit', NULL, 1, 5, now(), NULL, 5, '1-0', NULL, NULL",
        "2, 'transfer', 1, 2, 5, now(), 0, 5, '2-0', NULL, NULL",
        "3, 'transfer', 1, 2, 5, now(), 0, 5, '3-0', 77, NULL",  # a capture
        "4, 'refund', 2, 1, 5, now(), 0, 5, '4-0', NULL, 2",
    ]
    bad = [
        "5, 'deposit', NULL, 1, 5, now(), NULL, 5, '5-0', 77, NULL",
        "6, 'deposit', NULL, 1, 5, now(), NULL, 5, '6-0', NULL, 2",
        "7, 'transfer', 1, 2, 5, now(), 0, 5, '7-0', NULL, 2",
        "8, 'refund', 2, 1, 5, now(), 0, 5, '8-0', NULL, NULL",
        "9, 'refund', 2, 1, 5, now(), 0, 5, '9-0', 77, 2",
        "10, 'refund', NULL, 1, 5, now(), NULL, 5, '10-0', NULL, 2",
        "11, 'refund', 1, 1, 5, now(), 0, 5, '11-0', NULL, 2",
        "12, 'payout', 1, 2, 5, now(), 0, 5, '12-0', NULL, NULL",
    ]
    for values in good:
        async with db_engine.begin() as connection:
            await connection.execute(
                text(f"INSERT INTO transactions ({columns}) VALUES ({values})")
            )
    for values in bad:
        with pytest.raises(IntegrityError, match="transactions_kind_shape"):
            async with db_engine.begin() as connection:
                await connection.execute(
                    text(f"INSERT INTO transactions ({columns}) VALUES ({values})")
                )


async def test_downgrade_to_0002_and_upgrade_again(db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to, "0002")
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        columns = await connection.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("transactions")}
        )
    assert not {"holds", "hold_events"} & tables
    assert not {"hold_id", "refund_of"} & columns
    await migrate(db_engine)
    async with db_engine.connect() as connection:
        assert await connection.run_sync(_model_differences) == []


async def _recorded_buckets(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT buckets FROM deployment"))).scalars())


async def test_a_deployment_upgraded_with_users_records_its_one_bucket(
    db_engine: AsyncEngine,
) -> None:
    """Before 0005 every deployment ran with one bucket; an empty one records what it first
    starts with (persistence/deployment.py)."""
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to, "0004")
    await migrate(db_engine)
    assert await _recorded_buckets(db_engine) == []
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to, "0004")
        await connection.execute(
            text("INSERT INTO users (id, username, password_hash) VALUES (1, 'ann', 'x')")
        )
    await migrate(db_engine)
    assert await _recorded_buckets(db_engine) == [1]
