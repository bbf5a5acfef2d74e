"""Login throttling through HTTP, against real Redis: who is counted, and for how long.

The policy is in README ("Login throttling"); every number is a setting.
"""

from collections.abc import Awaitable, Callable
from ipaddress import ip_network
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.http.app import create_app
from service.settings import Settings
from tests.support.http_helpers import PASSWORD, Client, sign_up

PROXY = ip_network("127.0.0.1/32")  # the test client's own address plays the proxy


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: Redis,
    db_engine: AsyncEngine,
) -> MakeClient:
    """A client of an app with these settings changed; Redis and the database start empty."""

    async def make(**update: Any) -> Client:
        client: Client = await aiohttp_client(create_app(app_settings.model_copy(update=update)))
        return client

    return make


async def log_in(
    client: Client, username: str, password: str, forwarded_for: str | None = None
) -> aiohttp.ClientResponse:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = await client.post(
        "/api/login/", json={"username": username, "password": password}, headers=headers
    )
    await response.read()
    client.session.cookie_jar.clear()
    return response


async def test_clients_behind_a_trusted_proxy_are_counted_each_by_its_own_address(
    make_client: MakeClient,
) -> None:
    client = await make_client(trusted_proxies=(PROXY,), login_max_failures_per_address=3)
    await sign_up(client, "victim")
    for n in range(3):
        assert (await log_in(client, f"guess{n}", "wrong password", "203.0.113.5")).status == 401
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.5")).status == 429
    # Another client behind the same proxy is not locked out by the first one.
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.6")).status == 200
    # Hops the client wrote itself, left of what the proxy appended, change nothing.
    spoofed = await log_in(client, "victim", PASSWORD, "198.51.100.1, 203.0.113.5")
    assert spoofed.status == 429


async def test_without_trusted_proxies_a_forged_header_does_not_escape_the_limit(
    make_client: MakeClient,
) -> None:
    client = await make_client(login_max_failures_per_address=3)
    await sign_up(client, "victim")
    for n in range(3):
        response = await log_in(client, f"guess{n}", "wrong password", f"203.0.113.{n}")
        assert response.status == 401
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.99")).status == 429
