from sqlalchemy import inspect
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
