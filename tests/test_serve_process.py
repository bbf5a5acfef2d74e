"""`wallet serve --workers N` as an operator runs it (gunicorn): what slow clients cost it,
and how it refuses to start."""

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.postgres_admin import postgres_admin
from tests.support.raw_http import closed_within, read_response, request_head
from tests.support.served import Served, service_environ, wallet_serve

PASSWORD = "correct horse battery"
START_LIMIT_S = 60.0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _http() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _session_cookie(served: Served, name: str) -> str:
    async with _http() as http:
        credentials = {"username": name, "password": PASSWORD}
        sign_up = await http.post(f"{served.base_url}/api/sign-up/", json=credentials)
        assert sign_up.status == 201
        response = await http.post(f"{served.base_url}/api/login/", json=credentials)
        assert response.status == 200
        return response.cookies["wallet_session"].value


async def test_slow_clients_time_out_and_connections_past_the_limit_are_refused(
    redis_url: str, database_url: str, redis_client: Redis, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    limit = 20
    settings = {"max_connections": str(limit), "request_body_timeout_s": "1"}
    with wallet_serve(redis_url, database_url, tmp_path / "serve.log", 1, **settings) as served:
        port = _port(served.base_url)
        head = request_head(
            "POST", "/api/sign-up/", "Content-Type: application/json", "Content-Length: 60"
        )
        held = []
        for _ in range(limit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + b'{"username": ')
            held.append((reader, writer))
        await asyncio.sleep(0.2)
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await read_response(reader, 2.0)
            assert (refused.status, refused.json()["error"]["code"]) == (503, "server_busy")
            writer.close()
        for reader, writer in held:
            answer = await read_response(reader, 10.0)
            assert (answer.status, answer.json()["error"]["code"]) == (408, "request_timeout")
            assert await closed_within(reader, 5.0)
            writer.close()
        await _session_cookie(served, "honest")


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
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": unmigrated_database,
        "WALLET_METRICS_LISTEN": f"127.0.0.1:{_free_port()}",
    }
    args = ["serve", "--port", str(_free_port()), "--workers", "2"]
    result = _run_wallet(args, env)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == ["Error: the database has no schema: run `wallet migrate` first"]


def test_serve_on_a_taken_metrics_address_says_so_in_one_line(
    redis_url: str, database_url: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "WALLET_METRICS_LISTEN": address,
        }
        result = _run_wallet(["serve", "--port", str(_free_port())], env)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == [f"Error: WALLET_METRICS_LISTEN {address}: Address already in use"]
