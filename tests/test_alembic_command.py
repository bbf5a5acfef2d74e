"""The `alembic` command, with alembic.ini from the repository's top directory, on a
database of the test's own: configured as `wallet migrate` is (DATABASE_URL from the
environment), it upgrades, downgrades, prints the SQL without a database, and compares the
models with the schema (autogenerate)."""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from persistence.migrate import schema_problem
from persistence.models import Base
from service.settings import Settings
from tests.support.helpers import next_txn_id_epoch
from tests.support.served import service_environ

ROOT = Path(__file__).parents[1]
ALEMBIC = str(Path(sys.executable).parent / "alembic")
COMMAND_TIMEOUT_S = 120.0
# Nothing listens there: a command that tried to connect would fail.
NO_DATABASE = "postgresql+asyncpg://127.0.0.1:1/nowhere"


def alembic(database_url: str, *args: str, cwd: Path = ROOT) -> str:
    """Runs `alembic ARGS` as a person would in ``cwd``; its output (stdout)."""
    result = subprocess.run(
        [ALEMBIC, *args],
        cwd=cwd,
        env=service_environ() | {"DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def _schema(database_url: str) -> tuple[str | None, set[str], str | None]:
    """(alembic's revision, the tables, what `wallet serve` would object to)."""
    engine: AsyncEngine = connect_database(Settings(database_url=database_url))
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            revision = None
            if "alembic_version" in tables:
                query = text("SELECT version_num FROM alembic_version")
                revision = (await connection.execute(query)).scalar_one()
        return revision, tables, await schema_problem(engine)
    finally:
        await engine.dispose()


def schema(database_url: str) -> tuple[str | None, set[str], str | None]:
    return asyncio.run(_schema(database_url))


async def _next_epoch(database_url: str, set_to: int | None) -> int:
    engine: AsyncEngine = connect_database(Settings(database_url=database_url))
    try:
        if set_to is not None:
            async with engine.begin() as connection:
                await connection.execute(text(f"UPDATE txn_id_epoch SET next_epoch = {set_to}"))
        return await next_txn_id_epoch(engine)
    finally:
        await engine.dispose()


def next_epoch(database_url: str, set_to: int | None = None) -> int:
    """txn_id_epoch's next epoch, after setting it to ``set_to`` if given."""
    return asyncio.run(_next_epoch(database_url, set_to))


def test_alembic_upgrades_and_downgrades_the_database_url_as_wallet_migrate_does(
    unmigrated_database: str,
) -> None:
    alembic(unmigrated_database, "upgrade", "head")
    assert schema(unmigrated_database) == ("0011", {"alembic_version", *Base.metadata.tables}, None)
    # autogenerate finds nothing between persistence/models.py and the schema.
    assert "No new upgrade operations detected" in alembic(unmigrated_database, "check")

    alembic(unmigrated_database, "downgrade", "-9")
    revision, tables, problem = schema(unmigrated_database)
    assert revision == "0002"
    assert not {"holds", "hold_events", "deployment", "transfer_credits"} & tables
    assert problem == "the database has schema revision 0002, not 0011: run `wallet migrate` first"

    alembic(unmigrated_database, "upgrade", "head")
    assert schema(unmigrated_database)[0] == "0011"


def test_the_epochs_handed_out_stay_handed_out_when_epochs_shrink(
    unmigrated_database: str,
) -> None:
    """0004: an epoch of 10^12 ids is 1,000 of 10^9; downgrading rounds up."""
    alembic(unmigrated_database, "upgrade", "0003")
    next_epoch(unmigrated_database, set_to=3)  # ids below 3·10^12 may have been issued
    alembic(unmigrated_database, "upgrade", "head")
    assert next_epoch(unmigrated_database) == 3_000
    next_epoch(unmigrated_database, set_to=999_999)  # the check allows the new range
    next_epoch(unmigrated_database, set_to=3_000)
    alembic(unmigrated_database, "downgrade", "0003")
    assert next_epoch(unmigrated_database) == 3
    alembic(unmigrated_database, "upgrade", "head")
    next_epoch(unmigrated_database, set_to=3_001)  # old epoch 3 is partly handed out
    alembic(unmigrated_database, "downgrade", "0003")
    assert next_epoch(unmigrated_database) == 4


def test_alembic_prints_the_upgrade_sql_without_a_database() -> None:
    sql = alembic(NO_DATABASE, "upgrade", "head", "--sql")
    assert sql.startswith("BEGIN;")
    assert sql.rstrip().endswith("COMMIT;")
    for statement in (
        "CREATE TABLE users (",
        "CREATE TABLE txn_id_epoch (",
        "CREATE TABLE holds (",
        "INSERT INTO alembic_version (version_num) VALUES ('0001')",
        "UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002'",
        "UPDATE txn_id_epoch SET next_epoch = next_epoch * 1000",
        "CREATE TABLE deployment (",
        "CREATE TABLE transfer_reservations (",
    ):
        assert statement in sql, statement
    only_0003 = alembic(NO_DATABASE, "upgrade", "0002:head", "--sql")
    assert "CREATE TABLE holds (" in only_0003
    assert "CREATE TABLE users (" not in only_0003


def test_alembic_autogenerates_a_revision_from_the_models(
    unmigrated_database: str, tmp_path: Path
) -> None:
    """On a database at 0002 and the migrations without 0003 (and those that follow it),
    autogenerate derives from persistence/models.py what 0003 does. In a copy of the
    migrations: the checkout's versions/ stays as it is."""
    alembic(unmigrated_database, "upgrade", "0002")
    migrations = tmp_path / "migrations"
    shutil.copytree(
        ROOT / "persistence" / "migrations",
        migrations,
        ignore=shutil.ignore_patterns(
            "__pycache__",
            "0003_*",
            "0004_*",
            "0005_*",
            "0006_*",
            "0007_*",
            "0008_*",
            "0009_*",
            "0010_*",
            "0011_*",
        ),
    )
    ini = (ROOT / "alembic.ini").read_text()
    ini = ini.replace("%(here)s/persistence/migrations", "%(here)s/migrations")
    (tmp_path / "alembic.ini").write_text(ini.replace("= %(here)s\n", f"= {ROOT}\n"))

    alembic(unmigrated_database, "revision", "--autogenerate", "--rev-id", "0004", "-m", "again",
            cwd=tmp_path)  # fmt: skip

    [revision] = (migrations / "versions").glob("0004_*.py")
    source = revision.read_text()
    assert "down_revision = '0002'" in source
    for table in ("holds", "hold_events"):
        assert f"op.create_table('{table}'" in source, table
    for column in ("hold_id", "refund_of", "idempotency_fingerprint"):
        assert f"sa.Column('{column}'" in source, column
    assert schema(unmigrated_database)[0] == "0002"  # autogenerate changes no schema
