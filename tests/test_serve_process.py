"""`wallet serve --workers N` as an operator runs it (gunicorn): how it refuses to start."""

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres_admin import postgres_admin
from tests.support.served import service_environ

START_LIMIT_S = 60.0


def _run_wallet(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    wallet = str(Path(sys.executable).parent / "wallet")
    return subprocess.run(
        [wallet, *args],
        env=service_environ() | env,
        capture_output=True,
        text=True,
        timeout=START_LIMIT_S,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


def test_serve_without_the_schema_says_what_to_run_in_one_line(
    redis_url: str, unmigrated_database: str
) -> None:
    env = {"REDIS_URL": redis_url, "DATABASE_URL": unmigrated_database}
    args = ["serve", "--port", str(_free_port()), "--workers", "2"]
    result = _run_wallet(args, env)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == ["Error: the database has no schema: run `wallet migrate` first"]
