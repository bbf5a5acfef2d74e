"""`wallet serve --workers N` as an operator runs it (gunicorn): what it writes to its log,
where its metrics are, what slow clients cost it, and how it refuses to start."""

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from service.engines.common import free_port
from service.redis.types import RedisClient
from tests.support.container_files import compose_healthcheck, image_healthcheck, run_healthcheck
from tests.support.raw_http import closed_within, exchange, read_response, request_head
from tests.support.served import Served, service_environ, wallet_serve

PASSWORD = "correct horse battery"
DEPOSIT = "/api/balance/deposit/"
PROBES = 12
# How long the probes go on for both workers to have answered some.
PROBING_LIMIT_S = 60
START_LIMIT_S = 60.0


def _probe_pids(log_path: Path) -> set[int]:
    """The workers whose access lines for the probes are in the log so far."""
    pids = set()
    # The last line may still be being written: only whole lines are read.
    for line in log_path.read_text().split("\n")[:-1]:
        entry = json.loads(line)
        if str(entry.get("request_id", "")).startswith("probe-"):
            pids.add(int(entry["pid"]))
    return pids


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


def _total(metrics_text: str, route: str, status: str) -> float:
    prefix = f'wallet_http_requests_total{{method="GET",route="{route}",status="{status}"}} '
    lines = [line for line in metrics_text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_workers_write_json_lines_only_and_their_metrics_are_served_once(
    redis_url: str,
    database_url: str,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "serve.log"
    with wallet_serve(redis_url, database_url, log_path) as served:
        # Each probe on a connection of its own, until both workers have answered some:
        # which worker accepts a connection is the kernel's choice, and on a loaded machine
        # the second may still be starting when the first answers.
        sent = 0
        deadline = time.monotonic() + PROBING_LIMIT_S
        while sent < PROBES or len(_probe_pids(log_path)) < 2:
            assert time.monotonic() < deadline, "one worker answered every probe"
            async with _http() as http:
                headers = {"X-Request-Id": f"probe-{sent}"}
                response = await http.get(f"{served.base_url}/healthz", headers=headers)
                assert response.status == 200
                assert "Server" not in response.headers
            sent += 1
        async with _http() as http:
            for _ in range(3):  # whichever worker answers, the registry of both
                text = await (await http.get(f"{served.metrics_url}/metrics")).text()
                assert _total(text, "/healthz", "200") == sent
            assert (await http.get(f"{served.base_url}/metrics")).status == 404
        cookie = await _session_cookie(served, "alice")
        api_port = _port(served.base_url)
        oversized = request_head(
            "GET", "/api/balance/", f"Cookie: wallet_session={cookie}{'a' * 9_000}"
        )
        assert (await exchange("127.0.0.1", api_port, oversized)).status in (400, 431)
        # A client that hangs up while its body is read.
        _, writer = await asyncio.open_connection("127.0.0.1", api_port)
        hang_up = request_head(
            "POST",
            DEPOSIT,
            "Content-Type: application/json",
            "Content-Length: 50",
            f"Cookie: wallet_session={cookie}",
        )
        writer.write(hang_up + b'{"amount":')
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.5)

    text = log_path.read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    assert cookie not in text
    assert not [line for line in lines if "exception" in line]
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    access = [line for line in lines if line["logger"] == "wallet.access"]
    probes = [line for line in access if str(line["request_id"]).startswith("probe-")]
    assert len(probes) == sent
    assert len({line["pid"] for line in probes}) == 2
    assert {(line["route"], line["status"]) for line in probes} == {("/healthz", 200)}
    deposits = [line for line in access if line["route"] == DEPOSIT]
    assert [line["status"] for line in deposits] == [499]


async def test_slow_clients_time_out_and_connections_past_the_limit_are_refused(
    redis_url: str,
    database_url: str,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    tmp_path: Path,
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


def test_the_image_and_compose_healthchecks_pass_on_a_served_api_and_fail_without_it(
    redis_url: str,
    database_url: str,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    """The Dockerfile's HEALTHCHECK (alive) and compose's api healthcheck (ready), run
    here with the port of a real `wallet serve`."""
    checks = [image_healthcheck(), compose_healthcheck("api")]
    with wallet_serve(redis_url, database_url, tmp_path / "serve.log") as served:
        port = _port(served.base_url)
        assert [run_healthcheck(check, port) for check in checks] == [0, 0]
    assert 0 not in [run_healthcheck(check, port) for check in checks]


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


def test_serve_without_the_schema_says_what_to_run_in_one_line(
    redis_url: str, unmigrated_database: str
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": unmigrated_database,
        "WALLET_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    args = ["serve", "--port", str(free_port()), "--workers", "2"]
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
        result = _run_wallet(["serve", "--port", str(free_port())], env)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == [f"Error: WALLET_METRICS_LISTEN {address}: Address already in use"]
