"""Sign-up under abuse, through HTTP against real Redis and PostgreSQL: throttled per
client address, a taken name refused before any password is hashed, and logins that go
on during a flood of sign-ups."""

import asyncio
from ipaddress import ip_network

import aiohttp

from service.redis.types import RedisClient
from tests.support.helpers import snapshot
from tests.support.http_helpers import PASSWORD, Client, MakeClient, sign_up

PROXY = ip_network("127.0.0.1/32")  # the test client's own address plays the proxy
# Hashing that costs some milliseconds, so that a flood fills the queues.
COSTLY_HASHING = {"argon2_time_cost": 2, "argon2_memory_kib": 8 * 1024}


async def post(
    client: Client, path: str, username: str, forwarded_for: str | None = None
) -> aiohttp.ClientResponse:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    response = await client.post(
        path, json={"username": username, "password": PASSWORD}, headers=headers
    )
    await response.read()
    return response


async def test_sign_up_is_throttled_per_client_address(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(trusted_proxies=(PROXY,), sign_up_max_per_address=3)
    assert (await post(client, "/api/sign-up/", "first", "203.0.113.5")).status == 201
    assert (await post(client, "/api/sign-up/", "FIRST", "203.0.113.5")).status == 409
    assert (await post(client, "/api/sign-up/", "second", "203.0.113.5")).status == 201
    before = await snapshot(redis_client)
    refused = await post(client, "/api/sign-up/", "third", "203.0.113.5")
    assert refused.status == 429
    assert 3590 <= int(refused.headers["Retry-After"]) <= 3600
    assert (await refused.json())["error"]["code"] == "too_many_attempts"
    assert await snapshot(redis_client) == before
    # Nothing was created, and another address is not throttled by this one.
    assert (await post(client, "/api/sign-up/", "third", "203.0.113.6")).status == 201


async def test_a_taken_name_is_refused_before_any_password_is_hashed(
    make_client: MakeClient,
) -> None:
    # One hash at a time and none waiting: had the taken name been hashed first, nearly
    # all of these would be 503 server_busy.
    client = await make_client(
        sign_up_hash_max_concurrent=1, sign_up_hash_max_queued=0, **COSTLY_HASHING
    )
    await sign_up(client, "taken")
    responses = await asyncio.gather(*(post(client, "/api/sign-up/", "TAKEN") for _ in range(40)))
    assert [r.status for r in responses] == [409] * 40


async def test_logins_succeed_during_a_flood_of_sign_ups(make_client: MakeClient) -> None:
    client = await make_client(
        sign_up_hash_max_concurrent=1, sign_up_hash_max_queued=2, **COSTLY_HASHING
    )
    await sign_up(client, "honest")
    await sign_up(client, "taken")
    taken = [post(client, "/api/sign-up/", "taken") for _ in range(100)]
    new = [post(client, "/api/sign-up/", f"new{n}") for n in range(100)]
    logins = [post(client, "/api/login/", "honest") for _ in range(10)]
    responses = await asyncio.gather(*taken, *new, *logins)
    assert {r.status for r in responses[:100]} == {409}
    new_statuses = {r.status for r in responses[100:200]}
    assert new_statuses == {201, 503}, new_statuses  # the sign-up hashing was full
    assert [r.status for r in responses[200:]] == [200] * 10


async def test_weak_passwords_and_control_characters_are_refused_and_change_nothing(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(sign_up_max_per_address=3)
    before = await snapshot(redis_client)
    for password, code in [
        ("password", "weak_password"),
        ("AAAAAAAA", "weak_password"),
        ("\x00" * 8, "validation_error"),
        ("correct\thorse", "validation_error"),
    ]:
        response = await client.post(
            "/api/sign-up/", json={"username": "weakling", "password": password}
        )
        assert response.status == 422, password
        error = (await response.json())["error"]
        assert (error["code"], error["field"]) == (code, "password")
    # Nothing was created, not even a count of sign-ups from this address.
    assert await snapshot(redis_client) == before
    assert (await post(client, "/api/login/", "weakling")).status == 401
    assert (await post(client, "/api/sign-up/", "weakling")).status == 201
