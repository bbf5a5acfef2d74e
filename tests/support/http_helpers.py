"""Helpers for the HTTP tests: a logged-in user is a client with its cookie."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

Client = TestClient[web.Request, web.Application]
# The make_client fixture: a client of an app with some settings changed.
MakeClient = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery"


@dataclass
class LoggedIn:
    id: int
    username: str
    cookies: dict[str, str]

    async def post(self, client: Client, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        response = await client.post(path, json=body, cookies=self.cookies, headers=headers)
        return response.status, await response.json() if response.status != 204 else None

    async def get(self, client: Client, path: str, **query: str) -> tuple[int, Any]:
        response = await client.get(path, params=query, cookies=self.cookies)
        return response.status, await response.json()

    async def amounts(self, client: Client) -> tuple[int, int, int]:
        """Balance, held and available kopecks, as GET /api/balance/ shows them."""
        status, body = await self.get(client, "/api/balance/")
        assert status == 200, body
        assert body["available_kopecks"] == body["balance_kopecks"] - body["held_kopecks"]
        return body["balance_kopecks"], body["held_kopecks"], body["available_kopecks"]

    async def balance(self, client: Client) -> int:
        status, body = await self.get(client, "/api/balance/")
        assert status == 200, body
        return int(body["balance_kopecks"])


def error_of(body: Any) -> tuple[str, str | None]:
    """An error body's code and field."""
    return body["error"]["code"], body["error"].get("field")


async def sign_up(client: Client, username: str) -> int:
    response = await client.post("/api/sign-up/", json={"username": username, "password": PASSWORD})
    assert response.status == 201, await response.text()
    return int((await response.json())["id"])


async def login(client: Client, username: str, password: str = PASSWORD) -> LoggedIn:
    response = await client.post("/api/login/", json={"username": username, "password": password})
    assert response.status == 200, await response.text()
    body = await response.json()
    # The test client keeps one cookie jar; each user carries its own cookie instead.
    cookie = response.cookies["wallet_session"].value
    client.session.cookie_jar.clear()
    return LoggedIn(id=body["id"], username=body["username"], cookies={"wallet_session": cookie})


async def new_user(client: Client, username: str, deposit_kopecks: int = 0) -> LoggedIn:
    await sign_up(client, username)
    user = await login(client, username)
    if deposit_kopecks:
        status, body = await user.post(client, "/api/balance/deposit/", {"amount": deposit_kopecks})
        assert status == 201, body
    return user


async def log_in(
    client: Client, username: str, password: str, forwarded_for: str | None = None
) -> aiohttp.ClientResponse:
    """A login's answer, whatever it is, from ``forwarded_for`` (X-Forwarded-For) when
    given; its cookie is not kept."""
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = await client.post(
        "/api/login/", json={"username": username, "password": password}, headers=headers
    )
    await response.read()
    client.session.cookie_jar.clear()
    return response
