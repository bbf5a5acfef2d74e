"""What an operator answers for on the API's address: the headers of every answer, the
paths that do not reach /metrics, readiness, the access line, and what slow, hung-up or
malformed clients cost.

Tests that need raw sockets, settings of their own or the process's logs run the app in
this process: on aiohttp's test server, or through ``serving`` as every mode serves it;
tests/test_serve_process.py checks the same under gunicorn.
"""

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.http.app import create_app
from service.http.logs import JsonFormatter
from service.http.serving import serving
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.http_helpers import PASSWORD, Client, new_user
from tests.support.raw_http import (
    RawResponse,
    closed_within,
    exchange,
    read_response,
    request_head,
)

DEPOSIT = "/api/balance/deposit/"
JSON = "application/json"


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """aiohttp logs and counts a request after its answer left: wait for that."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """Every captured record as the service writes it: one JSON object per line."""
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def sample(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{label_text}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Served:
    api_port: int
    metrics_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def new_user(self, http: aiohttp.ClientSession, name: str) -> str:
        """Signs up and logs in; the session cookie's value."""
        credentials = {"username": name, "password": PASSWORD}
        assert (await http.post(self.url("/api/sign-up/"), json=credentials)).status == 201
        response = await http.post(self.url("/api/login/"), json=credentials)
        assert response.status == 200
        http.cookie_jar.clear()
        return response.cookies["wallet_session"].value


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    """The app as every mode serves it: ``serving`` on sockets of its own."""
    api = socket.create_server(("127.0.0.1", 0))
    metrics = socket.create_server(("127.0.0.1", 0))
    async with serving(create_app(settings), [api], metrics, settings.max_connections, 5.0):
        yield Served(api.getsockname()[1], metrics.getsockname()[1])


# --- every answer ------------------------------------------------------------------------


async def test_no_answer_may_be_cached_or_names_the_server_software(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=100)
    answers = [
        await client.get("/api/balance/", cookies=alice.cookies),
        await client.get(DEPOSIT, cookies=alice.cookies),
        await client.get("/api/balance/transfer/", cookies=alice.cookies),
        await client.post(DEPOSIT, json={"amount": 1}, cookies=alice.cookies),
        await client.get("/api/balance/"),  # 401
        await client.get("/healthz"),
        await client.get("/no/such/path"),
    ]
    for response in answers:
        assert response.headers.get("Cache-Control") == "no-store", (response.url, response.status)
        assert "Server" not in response.headers, response.headers["Server"]


@pytest.mark.parametrize(
    "path", ["/metrics", "/metrics/", "/api/%2e%2e/metrics", "/api/%2E%2E/metrics", "/Metrics"]
)
async def test_no_path_on_the_api_address_reaches_metrics(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    assert "wallet_http_requests_total" not in await response.text()


async def test_readiness_says_ok_or_unavailable_and_nothing_more(
    aiohttp_client: AiohttpClient, app_settings: Settings, redis_client: RedisClient
) -> None:
    """The address is public: which exception a backend raised is for the log."""
    nowhere = app_settings.model_copy(
        update={"database_url": "postgresql+asyncpg://127.0.0.1:1/nothing"}
    )
    client = await aiohttp_client(create_app(nowhere))
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "status": "degraded",
        "redis": "ok",
        "database": "unavailable",
    }


# --- the logs ------------------------------------------------------------------------------


async def test_one_json_access_line_per_request_with_its_request_id(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await aiohttp_client(create_app(app_settings))
    assert client.server.port is not None
    caplog.set_level(logging.INFO)
    await client.get("/api/balance/", headers={"X-Request-Id": "trace-1"})
    await client.get("/api/no-such-thing/", headers={"X-Request-Id": "trace-2"})
    malformed = await exchange("127.0.0.1", client.server.port, b"GET / HTTP/1.1\r\nHost\r\n\r\n")
    assert malformed.status == 400

    def access() -> list[dict[str, object]]:
        return [line for line in logged(caplog) if line["logger"] == "wallet.access"]

    await until(lambda: len(access()) == 3)
    first, second, third = access()
    assert first["message"] == "GET /api/balance/ 401"
    assert {k: first[k] for k in ("method", "route", "status", "request_id")} == {
        "method": "GET",
        "route": "/api/balance/",
        "status": 401,
        "request_id": "trace-1",
    }
    assert isinstance(first["latency_ms"], float)
    assert (second["route"], second["status"], second["request_id"]) == (
        "unmatched",
        404,
        "trace-2",
    )
    # Refused by aiohttp's parser, before any route or request id.
    assert (third["status"], third["route"], third["request_id"]) == (400, None, None)


def _cookie_then(extra: str) -> Callable[[str], list[str]]:
    return lambda session: [f"Cookie: wallet_session={session}{extra}"]


ABUSIVE_COOKIES: dict[str, Callable[[str], list[str]]] = {
    # aiohttp quotes the first 100 bytes of a line past 8190 bytes: the session id.
    "oversized cookie": _cookie_then("a" * 9_000),
    # ... the whole value of a header with a NUL byte.
    "NUL in the cookie": _cookie_then("\x00"),
    # ... the raw bytes of the request, the Cookie line included, after a bad character.
    "bad header after the cookie": lambda session: [
        f"Cookie: wallet_session={session}",
        "X-Broken: a\x01b",
    ],
}


@pytest.mark.parametrize("abuse", ABUSIVE_COOKIES)
async def test_a_request_the_parser_refuses_never_puts_its_cookie_in_the_log(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    abuse: str,
) -> None:
    client = await aiohttp_client(create_app(app_settings))
    assert client.server.port is not None
    alice = await new_user(client, "alice")
    session_id = alice.cookies["wallet_session"]
    caplog.set_level(logging.DEBUG)
    head = request_head("GET", "/api/balance/", *ABUSIVE_COOKIES[abuse](session_id))
    response = await exchange("127.0.0.1", client.server.port, head)
    assert response.status in (400, 431)
    await until(lambda: any(line["logger"] == "wallet.access" for line in logged(caplog)))
    lines = logged(caplog)
    assert session_id not in json.dumps(lines)
    # The refusal itself is still logged, as the client's fault.
    refusals = [line for line in lines if line["logger"] == "wallet.server"]
    assert [line["level"] for line in refusals] == ["WARNING"], refusals


async def test_a_client_that_hangs_up_is_counted_as_499_in_one_line_not_as_a_500(
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve(app_settings) as served, served.http() as http:
        alice = await served.new_user(http, "alice")

        async def count(status: str) -> float:
            text = await (await http.get(served.metrics_url)).text()
            return sample(
                text, "wallet_http_requests_total", route=DEPOSIT, method="POST", status=status
            )

        before_499, before_500 = await count("499"), await count("500")
        caplog.set_level(logging.DEBUG)
        head = request_head(
            "POST",
            DEPOSIT,
            "Content-Type: application/json",
            "Content-Length: 50",
            f"Cookie: wallet_session={alice}",
        )
        _, writer = await asyncio.open_connection("127.0.0.1", served.api_port)
        writer.write(head + b'{"amount":')
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.close()
        deadline = time.monotonic() + 3
        while await count("499") == before_499:
            assert time.monotonic() < deadline, "the hang-up was not counted"
            await asyncio.sleep(0.05)
        assert await count("499") == before_499 + 1
        assert await count("500") == before_500
        lines = [line for line in logged(caplog) if DEPOSIT in str(line)]
        assert [(line["logger"], line["status"]) for line in lines] == [("wallet.access", 499)]
        assert not [line for line in logged(caplog) if "exception" in line]


# --- slow clients and the connection limit --------------------------------------------------


BODY_TIMEOUT_S = 1.0


@pytest.fixture
def slow_settings(app_settings: Settings) -> Settings:
    return app_settings.model_copy(update={"request_body_timeout_s": BODY_TIMEOUT_S})


async def open_slow_posts(
    served: Served, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections that send a sign-up's headers and a few bytes of its body, then wait."""
    head = request_head(
        "POST", "/api/sign-up/", "Content-Type: application/json", "Content-Length: 60"
    )
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.api_port)
        writer.write(head + b'{"username": ')
        connections.append((reader, writer))
    await asyncio.gather(*(writer.drain() for _, writer in connections))
    return connections


async def honest_round(served: Served, name: str) -> list[int]:
    """What an honest client does: sign up, log in, deposit, read the balance."""
    async with served.http() as http:
        credentials = {"username": name, "password": PASSWORD}
        statuses = [(await http.post(served.url("/api/sign-up/"), json=credentials)).status]
        statuses.append((await http.post(served.url("/api/login/"), json=credentials)).status)
        statuses.append((await http.post(served.url(DEPOSIT), json={"amount": 5})).status)
        statuses.append((await http.get(served.url("/api/balance/"))).status)
    return statuses


async def test_many_slow_clients_get_408_and_honest_requests_are_answered_meanwhile(
    slow_settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    async with serve(slow_settings) as served:
        slow = await open_slow_posts(served, 300)
        started = time.monotonic()
        assert await honest_round(served, "honest") == [201, 200, 201, 200]
        assert time.monotonic() - started < BODY_TIMEOUT_S, "the honest client had to wait"
        answers = await asyncio.gather(
            *(read_response(reader, BODY_TIMEOUT_S + 5) for reader, _ in slow)
        )
        assert {a.status for a in answers} == {408}
        assert {a.json()["error"]["code"] for a in answers} == {"request_timeout"}
        # The connections end too: the rest of a body is not awaited for long.
        assert all(await asyncio.gather(*(closed_within(reader, 5) for reader, _ in slow)))
        for _, writer in slow:
            writer.close()
        assert await honest_round(served, "after") == [201, 200, 201, 200]


async def test_a_connection_whose_headers_trickle_in_is_closed(
    app_settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    settings = app_settings.model_copy(update={"keepalive_timeout_s": 1.0})
    async with serve(settings) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.api_port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(10):  # a byte now and then: the timer is not reset by them
            await asyncio.sleep(0.2)
            if writer.is_closing():
                break
            writer.write(b"X")
        assert await closed_within(reader, 3.0)
        assert time.monotonic() - started < 3.0
        writer.close()


async def test_connections_past_the_limit_are_refused_and_the_process_serves_on(
    slow_settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    limit = 20
    settings = slow_settings.model_copy(update={"max_connections": limit})
    async with serve(settings) as served:
        held = await open_slow_posts(served, limit)
        await asyncio.sleep(0.1)  # every one of them is in
        refused: list[RawResponse] = []
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.api_port)
            refused.append(await read_response(reader, 1.0))
            assert await closed_within(reader, 1.0)
            writer.close()
        assert {r.status for r in refused} == {503}
        assert {r.json()["error"]["code"] for r in refused} == {"server_busy"}
        assert {r.headers["retry-after"] for r in refused} == {"1"}
        # The held ones time out like any slow client and free their places.
        for reader, writer in held:
            assert (await read_response(reader, BODY_TIMEOUT_S + 5)).status == 408
            assert await closed_within(reader, 5)
            writer.close()
        assert await honest_round(served, "after") == [201, 200, 201, 200]
        # All the places are back: as many connections as the limit, again.
        again = await open_slow_posts(served, limit)
        for reader, _ in again:
            assert (await read_response(reader, BODY_TIMEOUT_S + 5)).status == 408
        for _, writer in again:
            writer.close()


async def test_metrics_have_their_own_address(
    app_settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    async with serve(app_settings) as served, served.http() as http:
        assert (await http.get(served.url("/healthz"))).status == 200
        text = await (await http.get(served.metrics_url)).text()
        assert sample(
            text, "wallet_http_requests_total", route="/healthz", method="GET", status="200"
        )
        assert (await http.get(served.url("/metrics"))).status == 404
        # The metrics address serves nothing else.
        other = f"http://127.0.0.1:{served.metrics_port}/api/balance/"
        assert (await http.get(other)).status == 404
