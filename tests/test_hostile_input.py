"""Hostile input through HTTP: what the other HTTP tests do not already cover.

Oversized, nested, mis-typed and mis-encoded bodies, odd number spellings, duplicate
keys, look-alike usernames, tampered and replayed session cookies, login throttling
per address and under concurrency, and cross-site form posts. Every refused request
gets the contract's error body and changes nothing in Redis.
"""

import asyncio
import gzip
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.limits import MAX_BODY_BYTES
from service.http.app import create_app
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.helpers import snapshot
from tests.support.http_helpers import PASSWORD, Client, LoggedIn, login, new_user, sign_up

DEPOSIT = "/api/balance/deposit/"
TRANSFER = "/api/balance/transfer/"
JSON = "application/json"


def assert_error(body: Any, code: str | None = None, field: str | None = None) -> None:
    """The contract's error body: {"error": {"code", "message", "field"?}} and nothing else;
    a validation_error also lists its problems in "errors", the first one's field in "field"."""
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    validation = error.get("code") == "validation_error"
    assert set(error) - {"field"} == {"code", "message", *(["errors"] if validation else [])}, body
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    if validation:
        assert error["errors"], body
        assert error["errors"][0].get("field") == error.get("field"), body
    if code is not None:
        assert error["code"] == code, body
    if field is not None:
        assert error.get("field") == field, body


async def refused(response: aiohttp.ClientResponse, status: int | tuple[int, ...]) -> Any:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status in statuses, (response.status, await response.text())
    assert response.content_type == JSON
    body = await response.json()
    assert_error(body)
    return body


async def post_raw(
    client: Client, user: LoggedIn, path: str, data: Any, content_type: str = JSON, **headers: str
) -> aiohttp.ClientResponse:
    return await client.post(
        path, data=data, cookies=user.cookies, headers={"Content-Type": content_type, **headers}
    )


async def alice_and_bob(client: Client) -> tuple[LoggedIn, LoggedIn]:
    return await new_user(client, "alice", deposit_kopecks=1_000), await new_user(client, "bob")


# --- raw HTTP, for what an HTTP client library will not send --------------------------------


async def raw_exchange(
    client: Client, request: bytes, *, timeout_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Writes bytes to the server and reads one response; fails if none comes in time."""
    assert client.server.host is not None
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            status_line = await reader.readline()
            assert status_line.startswith(b"HTTP/1."), status_line
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
        return status, headers, body
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout_s} s") from None
    finally:
        writer.close()


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


# --- body size -----------------------------------------------------------------------------


async def test_a_body_of_exactly_64_kib_is_read_and_one_byte_more_is_413(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    exact = b'{"amount": 5}'.ljust(MAX_BODY_BYTES, b" ")
    response = await post_raw(client, alice, DEPOSIT, exact)
    assert response.status == 201, await response.text()
    before = await snapshot(redis_client)
    response = await post_raw(client, alice, DEPOSIT, exact + b" ")
    body = await refused(response, 413)
    assert_error(body, "payload_too_large")
    assert await snapshot(redis_client) == before
    assert await alice.balance(client) == 5


async def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    before = await snapshot(redis_client)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"amount": 5'
        for _ in range(5):
            yield b" " * 16_384
        yield b"}"

    response = await post_raw(client, alice, DEPOSIT, chunks())
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert_error(await refused(response, 413), "payload_too_large")
    assert await snapshot(redis_client) == before


async def test_a_compressed_body_is_limited_after_decompression(
    client: Client, redis_client: RedisClient
) -> None:
    """A gzip bomb: 20 KiB on the wire, 20 MB once inflated."""
    alice = await new_user(client, "alice")
    before = await snapshot(redis_client)
    bomb = gzip.compress(b'{"amount": 5' + b" " * 20_000_000 + b"}", compresslevel=9)
    response = await post_raw(client, alice, DEPOSIT, bomb, **{"Content-Encoding": "gzip"})
    assert_error(await refused(response, 413), "payload_too_large")
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize("declared", [MAX_BODY_BYTES + 1, 10**9])
async def test_a_declared_length_over_the_limit_is_413_without_waiting_for_the_body(
    client: Client, redis_client: RedisClient, declared: int
) -> None:
    """Content-Length says more than 64 KiB, and the client sends a few bytes and waits.

    The server must answer from the header; reading on would hold the request open for as
    long as the client likes.
    """
    alice = await new_user(client, "alice")
    before = await snapshot(redis_client)
    for path, cookie in ((DEPOSIT, alice.cookies["wallet_session"]), ("/api/sign-up/", None)):
        head = request_head(
            "POST",
            path,
            "Content-Type: application/json",
            f"Content-Length: {declared}",
            *([f"Cookie: wallet_session={cookie}"] if cookie else []),
        )
        status, headers, body = await raw_exchange(client, head + b'{"amount": 5}', timeout_s=3)
        assert status == 413, body
        assert headers["content-type"].startswith(JSON)
        assert_error(json.loads(body), "payload_too_large")
    assert await snapshot(redis_client) == before


# --- nesting, media types, encodings -------------------------------------------------------

NESTED_BODIES = {
    "32k arrays": b"[" * 32_000 + b"]" * 32_000,
    "32k objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "32k arrays in amount": b'{"amount": ' + b"[" * 32_000 + b"]" * 32_000 + b"}",
    "unclosed 60k arrays": b"[" * 60_000,
    "100k arrays": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", NESTED_BODIES)
async def test_deeply_nested_json_is_a_prompt_client_error(
    client: Client, redis_client: RedisClient, name: str
) -> None:
    alice, _ = await alice_and_bob(client)
    before = await snapshot(redis_client)
    for path in (DEPOSIT, TRANSFER, "/api/sign-up/", "/api/login/"):
        async with asyncio.timeout(5):
            response = await post_raw(client, alice, path, NESTED_BODIES[name])
            await refused(response, (400, 413, 422))
    assert await snapshot(redis_client) == before


FORM_POSTS: dict[str, Callable[[int], tuple[Any, str | None]]] = {
    "urlencoded form": lambda to: (
        f"to_user_id={to}&amount=500",
        "application/x-www-form-urlencoded",
    ),
    # <form enctype="text/plain"> can send a body that looks like JSON.
    "text/plain form": lambda to: (
        f'{{"to_user_id": {to}, "amount": 500, "x": "="}}',
        "text/plain",
    ),
    "multipart form": lambda to: (
        aiohttp.FormData({"to_user_id": str(to), "amount": "500"}, default_to_multipart=True),
        None,
    ),
    "no content type": lambda to: (f'{{"to_user_id": {to}, "amount": 500}}'.encode(), ""),
    "json-like type": lambda to: (
        f'{{"to_user_id": {to}, "amount": 500}}',
        "application/json-patch+json",
    ),
}  # fmt: skip


@pytest.mark.parametrize("form", FORM_POSTS)
async def test_a_cross_site_form_post_with_a_valid_session_moves_no_money(
    client: Client, redis_client: RedisClient, form: str
) -> None:
    alice, bob = await alice_and_bob(client)
    key = {"Idempotency-Key": f"csrf-{form.replace(' ', '-')}"}
    before = await snapshot(redis_client)
    for path in (TRANSFER, DEPOSIT):
        data, content_type = FORM_POSTS[form](bob.id)
        headers = dict(key, **({"Content-Type": content_type} if content_type is not None else {}))
        response = await client.post(path, data=data, cookies=alice.cookies, headers=headers)
        assert_error(await refused(response, 415), "unsupported_media_type")
    assert await snapshot(redis_client) == before
    # The refused form did not burn the key: the same key with JSON is a fresh transfer.
    status, body = await alice.post(client, TRANSFER, {"to_user_id": bob.id, "amount": 5}, **key)
    assert status == 201, body
    assert (await alice.balance(client), await bob.balance(client)) == (995, 5)


async def test_a_login_form_is_refused(client: Client, redis_client: RedisClient) -> None:
    """Login CSRF: a cross-site form must not log the victim into the attacker's account."""
    await sign_up(client, "mallory")
    before = await snapshot(redis_client)
    response = await client.post("/api/login/", data={"username": "mallory", "password": PASSWORD})
    assert_error(await refused(response, 415), "unsupported_media_type")
    assert "wallet_session" not in response.cookies
    assert await snapshot(redis_client) == before


NOT_UTF8 = {
    "latin-1 e-acute": b'{"username": "ren\xe9e", "password": "password123"}',
    "latin-1 in password": b'{"username": "renee", "password": "pass\xe9word123"}',
    "lone continuation byte": b'{"username": "renee", "password": "password\x80123"}',
    "overlong slash": b'{"username": "renee", "password": "password\xc0\xaf123"}',
    "encoded surrogate": b'{"username": "renee", "password": "pass\xed\xa0\x80word123"}',
    "escaped lone surrogate": b'{"username": "renee", "password": "pass\\ud800word123"}',
    "truncated sequence": b'{"username": "renee", "password": "password123\xe2\x82"}',
    "invalid byte in a key": b'{"username": "renee", "password": "password123", "\xff": 1}',
    "utf-16": '{"username": "renee", "password": "password123"}'.encode("utf-16"),
    "byte order mark": b'\xef\xbb\xbf{"username": "renee", "password": "password123"}',
    "trailing NUL": b'{"username": "renee", "password": "password123"}\x00',
    "two documents": b'{"username": "renee", "password": "password123"} {}',
}


@pytest.mark.parametrize("name", NOT_UTF8)
async def test_a_body_that_is_not_utf8_json_is_malformed(
    client: Client, redis_client: RedisClient, name: str
) -> None:
    """JSON is UTF-8 (RFC 8259): a charset parameter does not make other bytes readable."""
    before = await snapshot(redis_client)
    for charset in ("", "; charset=latin-1", "; charset=utf-16"):
        response = await client.post(
            "/api/sign-up/", data=NOT_UTF8[name], headers={"Content-Type": JSON + charset}
        )
        if name == "escaped lone surrogate":  # JSON syntax, but no Unicode string: either
            body = await refused(response, (400, 422))
            field = "password" if response.status == 422 else None
            assert_error(body, "malformed_json" if field is None else "validation_error", field)
        else:
            assert_error(await refused(response, 400), "malformed_json")
    assert await snapshot(redis_client) == before
    # Nobody was created under any spelling.
    response = await client.post(
        "/api/login/", json={"username": "renee", "password": "password123"}
    )
    assert response.status == 401


async def test_invalid_utf8_in_a_money_body_changes_nothing(
    client: Client, redis_client: RedisClient
) -> None:
    alice, bob = await alice_and_bob(client)
    before = await snapshot(redis_client)
    for path, data in (
        (DEPOSIT, b'{"amount": 5, "note": "\xff"}'),
        (TRANSFER, b'{"to_username": "b\xf8b", "amount": 5}'),
        (TRANSFER, b'{"to_user_id": %d, "amount": 5, "\xc0\xaf": 1}' % bob.id),
    ):
        assert_error(
            await refused(await post_raw(client, alice, path, data), 400), "malformed_json"
        )
    assert await snapshot(redis_client) == before


# --- numbers ---------------------------------------------------------------------------------

# Spellings of a number that are JSON but not a JSON integer in range: 422 on amount.
NOT_AN_INTEGER = ["-0", "1e3", "1E3", "1e+3", "10.0", "1.0e1", "-0.0", "5e-1", "1e400",
                  "9007199254740993.0", "1" + "0" * 4_000]  # fmt: skip
# Not JSON (some are JavaScript or Python): 400 malformed_json.
NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "+5", "05", "0x10", ".5", "5.", "1_000"]
# JSON, but past what a parser need read (Python's int() stops at 4300 digits): 400 or 422.
TOO_LONG_NUMBERS = ["1" + "0" * 5_000, "-" + "9" * 5_000]


def _short(spelling: str) -> str:
    return spelling if len(spelling) <= 20 else f"{spelling[:2]}...{len(spelling)}-digits"


@pytest.mark.parametrize(
    "spelling", NOT_AN_INTEGER + NOT_JSON_NUMBERS + TOO_LONG_NUMBERS, ids=_short
)
async def test_amount_spellings_are_refused_and_change_nothing(
    client: Client, redis_client: RedisClient, spelling: str
) -> None:
    alice, bob = await alice_and_bob(client)
    before = await snapshot(redis_client)
    bodies = {
        DEPOSIT: f'{{"amount": {spelling}}}',
        TRANSFER: f'{{"to_user_id": {bob.id}, "amount": {spelling}}}',
    }
    for path, data in bodies.items():
        response = await post_raw(client, alice, path, data)
        if spelling in NOT_AN_INTEGER:
            assert_error(await refused(response, 422), "validation_error", "amount")
        elif spelling in NOT_JSON_NUMBERS:
            assert_error(await refused(response, 400), "malformed_json")
        else:
            body = await refused(response, (400, 422))
            expected = "malformed_json" if response.status == 400 else "validation_error"
            assert_error(body, expected)
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize(
    "spelling", ["-0", "1e0", "2.0", str(2**63), str(2**53 + 1), '"2"', "true", "[2]", "null"]
)
async def test_recipient_id_spellings_are_refused_and_change_nothing(
    client: Client, redis_client: RedisClient, spelling: str
) -> None:
    alice, bob = await alice_and_bob(client)
    assert bob.id == 2  # the spellings above would all mean bob if they were coerced
    before = await snapshot(redis_client)
    response = await post_raw(client, alice, TRANSFER, f'{{"to_user_id": {spelling}, "amount": 5}}')
    body = await refused(response, 422)
    assert_error(body, "validation_error")
    assert body["error"].get("field") in ("to_user_id", None)
    assert await snapshot(redis_client) == before


DUPLICATE_KEYS = {
    "amount twice (deposit)": (DEPOSIT, '{{"amount": 1, "amount": 100}}', "amount"),
    "amount twice (transfer)": (TRANSFER, '{{"to_user_id": {bob}, "amount": 1, "amount": 900}}',
                                "amount"),
    "recipient id twice": (TRANSFER, '{{"to_user_id": 999999, "to_user_id": {bob}, "amount": 1}}',
                           "to_user_id"),
    "recipient name twice": (TRANSFER,
                             '{{"to_username": "nobody", "to_username": "bob", "amount": 1}}',
                             "to_username"),
    "escaped duplicate": (DEPOSIT, '{{"amount": 1, "am\\u006funt": 100}}', "amount"),
}  # fmt: skip


@pytest.mark.parametrize("case", DUPLICATE_KEYS)
async def test_duplicate_keys_are_refused(
    client: Client, redis_client: RedisClient, case: str
) -> None:
    """Which of two values counts is up to each parser; a proxy, a log and this service could
    each read another amount. Refusing is the only answer every reader agrees with."""
    alice, bob = await alice_and_bob(client)
    before = await snapshot(redis_client)
    path, template, field = DUPLICATE_KEYS[case]
    response = await post_raw(client, alice, path, template.format(bob=bob.id))
    assert_error(await refused(response, 422), "validation_error", field)
    assert await snapshot(redis_client) == before


async def test_duplicate_keys_in_credentials_are_refused(
    client: Client, redis_client: RedisClient
) -> None:
    before = await snapshot(redis_client)
    data = '{"username": "trudy", "username": "admin", "password": "password123"}'
    response = await client.post("/api/sign-up/", data=data, headers={"Content-Type": JSON})
    assert_error(await refused(response, 422), "validation_error", "username")
    assert await snapshot(redis_client) == before
    for name in ("trudy", "admin"):
        response = await client.post(
            "/api/login/", json={"username": name, "password": "password123"}
        )
        assert response.status == 401


# --- usernames ------------------------------------------------------------------------------

LOOK_ALIKES = [
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth "alice"
    "\uff21\uff2c\uff29\uff23\uff25",  # fullwidth "ALICE"
    "\u0430lice",  # Cyrillic a
    "alic\u0435",  # Cyrillic e
    "\u0391LICE",  # Greek capital alpha
    "al\u0131ce",  # dotless i (upper() is "ALICE")
    "AL\u0130CE",  # dotted capital I (lower() is "ali̇ce")
    "\u212aate",  # Kelvin sign (lower() is "kate")
    "\ufb01ona",  # the "fi" ligature (NFKC is "fiona")
    "\U0001d41alice",  # mathematical bold a
    "a\u0301lice",  # a + combining acute
    "a\u200blice",  # zero-width space
    "ali\u00adce",  # soft hyphen
    "alice\u00a0",  # no-break space
    "alice\u2024x",  # one dot leader (NFKC is ".")
    "\u2460\u2461\u2462",  # circled digits (NFKC is "123")
]


async def test_unicode_look_alike_usernames_are_refused_everywhere(
    client: Client, redis_client: RedisClient
) -> None:
    """Usernames are ASCII only: a look-alike is refused, never normalized onto a real name."""
    alice = await new_user(client, "alice", deposit_kopecks=100)
    for real in ("kate", "fiona", "123"):
        await sign_up(client, real)
    before = await snapshot(redis_client)
    for name in LOOK_ALIKES:
        credentials = {"username": name, "password": PASSWORD}
        for path in ("/api/sign-up/", "/api/login/"):
            body = await refused(await client.post(path, json=credentials), 422)
            assert_error(body, "validation_error", "username")
        response = await client.post(
            TRANSFER, json={"to_username": name, "amount": 1}, cookies=alice.cookies
        )
        assert_error(await refused(response, 422), "validation_error", "to_username")
    assert await snapshot(redis_client) == before


async def test_case_variants_are_one_user_even_when_signing_up_at_once(client: Client) -> None:
    spellings = ["Zed", "zed", "ZED", "zEd", "zeD"]
    responses = await asyncio.gather(
        *(
            client.post("/api/sign-up/", json={"username": s, "password": PASSWORD})
            for s in spellings
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201, 409, 409, 409, 409]
    winner = next(s for s, r in zip(spellings, responses, strict=True) if r.status == 201)
    for response in responses:
        if response.status == 409:
            assert_error(await response.json(), "username_taken", "username")
    for spelling in spellings:
        user = await login(client, spelling)
        assert user.username == winner


# --- sessions --------------------------------------------------------------------------------


def _flip(text: str, index: int) -> str:
    flipped = "A" if text[index] != "A" else "B"
    return text[:index] + flipped + text[index + 1 :]


TAMPERINGS: dict[str, Callable[[str], str]] = {
    "first character flipped": lambda c: _flip(c, 0),
    "middle character flipped": lambda c: _flip(c, len(c) // 2),
    "last character flipped": lambda c: _flip(c, -1),
    "truncated": lambda c: c[:-1],
    "extended": lambda c: c + "A",
    "upper-cased": lambda c: c.upper(),
    "doubled": lambda c: c + c,
    "very long": lambda c: (c * 100)[:6_000],
    "never issued": lambda c: secrets.token_urlsafe(32),
    "glob characters": lambda c: "*",
    "path characters": lambda c: "../" + c,
    "percent-encoded": lambda c: "".join(f"%{ord(ch):02X}" for ch in c),
    "quoted": lambda c: f'"{c}"',
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
async def test_a_tampered_session_cookie_is_401_and_changes_nothing(
    client: Client, redis_client: RedisClient, tampering: str
) -> None:
    alice, bob = await alice_and_bob(client)
    cookie = alice.cookies["wallet_session"]
    forged = {"wallet_session": TAMPERINGS[tampering](cookie)}
    assert forged["wallet_session"] != cookie
    before = await snapshot(redis_client)
    attempts = [
        client.get("/api/balance/", cookies=forged),
        client.get(DEPOSIT, cookies=forged),
        client.post(DEPOSIT, json={"amount": 5}, cookies=forged),
        client.post(TRANSFER, json={"to_user_id": bob.id, "amount": 5}, cookies=forged),
        client.post("/api/logout/", cookies=forged),
    ]
    for attempt in attempts:
        response = await attempt
        assert_error(await refused(response, 401), "unauthorized")
        client.session.cookie_jar.clear()
    assert await snapshot(redis_client) == before
    assert await alice.balance(client) == 1_000  # the real session still works


async def test_the_cookie_name_is_exact(client: Client) -> None:
    alice = await new_user(client, "alice")
    cookie = alice.cookies["wallet_session"]
    for name in ("Wallet_Session", "wallet_session_", "wallet-session", "WALLET_SESSION"):
        response = await client.get("/api/balance/", cookies={name: cookie})
        await refused(response, 401)
        client.session.cookie_jar.clear()


async def test_requests_replayed_after_logout_are_refused(
    client: Client, redis_client: RedisClient
) -> None:
    alice, bob = await alice_and_bob(client)
    key = {"Idempotency-Key": "pay-bob-once"}
    status, first = await alice.post(client, TRANSFER, {"to_user_id": bob.id, "amount": 300}, **key)
    assert status == 201
    status, deposit = await alice.post(client, DEPOSIT, {"amount": 7})
    assert status == 201
    # Bob logs out: his old cookie is useless to anyone who captured it.
    assert (await bob.post(client, "/api/logout/", None))[0] == 204
    assert (await alice.post(client, "/api/logout/", None))[0] == 204
    before = await snapshot(redis_client)
    for who in (alice, bob):
        for replay in (
            who.post(client, TRANSFER, {"to_user_id": bob.id, "amount": 300}, **key),
            who.post(client, TRANSFER, {"to_user_id": alice.id, "amount": 1}),
            who.post(client, DEPOSIT, {"amount": 7}),
            who.post(client, "/api/logout/", None),
            who.get(client, "/api/balance/"),
            who.get(client, TRANSFER),
        ):
            status, body = await replay
            assert status == 401
            assert_error(body, "unauthorized")
    assert await snapshot(redis_client) == before
    # Logged in again, the retried transfer is the first one, not a second.
    again = await login(client, "alice")
    assert again.cookies != alice.cookies
    assert await again.post(client, TRANSFER, {"to_user_id": bob.id, "amount": 300}, **key) == (
        201,
        first,
    )
    assert await again.balance(client) == 1_000 - 300 + 7
    assert deposit["amount"] == 7


# --- login throttling ------------------------------------------------------------------------


@pytest.fixture
async def strict_client(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
) -> Client:
    """At most 5 failed logins per client address (and the default 10 per username)."""
    settings = app_settings.model_copy(update={"login_max_failures_per_address": 5})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


async def _login_status(client: Client, username: str, password: str) -> int:
    response = await client.post("/api/login/", json={"username": username, "password": password})
    if response.status != 200:
        await refused(response, (401, 429, 503))  # 503: too many hashes queued at once
    client.session.cookie_jar.clear()
    return response.status


async def test_failures_across_many_usernames_lock_the_address(strict_client: Client) -> None:
    client = strict_client
    await sign_up(client, "victim")
    for n in range(5):
        assert await _login_status(client, f"guess{n}", "wrong password") == 401
    response = await client.post("/api/login/", json={"username": "victim", "password": PASSWORD})
    assert_error(await refused(response, 429), "too_many_attempts")
    assert await _login_status(client, "guess9", "wrong password") == 429
    # Another address is not locked by this one.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    ) as elsewhere:
        response = await elsewhere.post(
            client.make_url("/api/login/"), json={"username": "victim", "password": PASSWORD}
        )
        assert response.status == 200, await response.text()


async def test_successful_logins_of_many_users_from_one_address_are_not_throttled(
    strict_client: Client,
) -> None:
    client = strict_client
    names = [f"member{n}" for n in range(15)]  # three times the address limit
    for name in names:
        await sign_up(client, name)
    for round_ in range(2):
        for name in names:
            assert await _login_status(client, name, PASSWORD) == 200, (round_, name)
    # Failures below the limit, between successes, do not add up to a lock either.
    for n in range(4):
        assert await _login_status(client, names[n], "wrong password") == 401
        assert await _login_status(client, names[n + 1], PASSWORD) == 200


async def test_concurrent_wrong_passwords_cannot_exceed_the_limit(
    client: Client, redis_client: RedisClient
) -> None:
    """Ten failures per username and address, however many attempts are in flight at
    once: each is counted before its password is checked."""
    await sign_up(client, "grace")
    statuses = await asyncio.gather(
        *(_login_status(client, "grace", f"guess-{n:04d}") for n in range(40))
    )
    checked = statuses.count(401)
    assert checked + statuses.count(429) + statuses.count(503) == 40
    assert checked <= 10, f"{checked} passwords were checked; the limit is 10"
    # Refused now from this address, the right password included.
    assert await _login_status(client, "grace", PASSWORD) == 429


# --- odd requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/api/balance/", 405),
        ("PUT", DEPOSIT, 405),
        ("PATCH", TRANSFER, 405),
        ("GET", "/api/login/", 405),
        ("GET", "/api/balance", 404),
        ("GET", "/api/balance/%2e%2e/", 404),
        ("POST", "/api/balance/deposit/%00/", 404),
        ("GET", "/api/" + "a" * 4_000, 404),
    ],
)
async def test_unknown_routes_and_methods_answer_in_the_contract_shape(
    client: Client, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, json={"amount": 1})
    await refused(response, status)


HEADER_ABUSE = {
    "one huge header": ["X-Padding: " + "a" * 9_000],
    "a huge cookie": ["Cookie: wallet_session=" + "a" * 9_000],
    "many headers": [f"X-Header-{n}: {n}" for n in range(200)],
    "a huge Idempotency-Key": ["Idempotency-Key: " + "k" * 9_000],
}


@pytest.mark.parametrize("abuse", HEADER_ABUSE)
async def test_huge_or_many_headers_are_a_client_error(
    client: Client, redis_client: RedisClient, abuse: str
) -> None:
    """aiohttp's parser limits (8190 bytes a line, 128 headers) answer before the app: a 4xx
    in plain text, never a 5xx, and the server goes on serving."""
    alice = await new_user(client, "alice")
    before = await snapshot(redis_client)
    head = request_head(
        "POST",
        DEPOSIT,
        "Content-Type: application/json",
        "Content-Length: 13",
        f"Cookie: wallet_session={alice.cookies['wallet_session']}",
        *HEADER_ABUSE[abuse],
    )
    status, _, body = await raw_exchange(client, head + b'{"amount": 5}')
    assert status in (400, 431), body
    assert b"Traceback" not in body
    status, _, body = await raw_exchange(client, request_head("GET", "/api/" + "x" * 9_000))
    assert status in (400, 414, 431), body
    assert await snapshot(redis_client) == before
    assert await alice.balance(client) == 0
