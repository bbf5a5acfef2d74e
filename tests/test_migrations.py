from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.migrate import migrate
from persistence.models import Base


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


def _downgrade_to_0001(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", "persistence:migrations")
    config.attributes["connection"] = connection
    command.downgrade(config, "0001")


async def _next_epoch(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(text("SELECT next_epoch FROM txn_id_epoch"))).scalar_one()
        )


async def test_the_epoch_table_counts_epoch_0_as_handed_out_when_ids_were_issued(
    db_engine: AsyncEngine,
) -> None:
    """An older version issued ids from 1 up, all in epoch 0, without recording it."""
    async with db_engine.begin() as connection:
        await connection.run_sync(_downgrade_to_0001)
    await migrate(db_engine)
    assert await _next_epoch(db_engine) == 0  # a new system: nothing issued yet
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
    assert await _next_epoch(db_engine) == 1
