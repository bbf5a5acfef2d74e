"""Sign-up, login, logout, sessions and throttling through HTTP."""

import asyncio
import json
from typing import cast

import pytest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service.http.app import create_app
from service.settings import Settings
from tests.support.http_helpers import PASSWORD, Client, login, new_user, sign_up


async def test_sign_up_returns_the_user_and_keeps_the_spelling(client: Client) -> None:
    response = await client.post("/api/sign-up/", json={"username": "Alice", "password": PASSWORD})
    assert response.status == 201
    body = await response.json()
    assert body == {"id": body["id"], "username": "Alice"}
    user = await login(client, "alice")
    assert user.username == "Alice"
    assert await user.balance(client) == 0


async def test_usernames_are_unique_regardless_of_case(client: Client) -> None:
    await sign_up(client, "Alice")
    for name in ("alice", "ALICE", "Alice"):
        response = await client.post("/api/sign-up/", json={"username": name, "password": PASSWORD})
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "username_taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "al", "password": PASSWORD}, "username"),
        ({"username": "a" * 33, "password": PASSWORD}, "username"),
        ({"username": "bad name", "password": PASSWORD}, "username"),
        ({"username": "alice\n", "password": PASSWORD}, "username"),
        ({"username": "\u0430lice", "password": PASSWORD}, "username"),  # Cyrillic a
        ({"username": "alice", "password": "short"}, "password"),
        ({"username": "alice", "password": "x" * 129}, "password"),
        ({"username": "alice"}, "password"),
        ({"username": 5, "password": PASSWORD}, "username"),
        ({"username": "alice", "password": PASSWORD, "admin": True}, "admin"),
    ],
)
async def test_sign_up_validation(client: Client, body: dict[str, object], field: str) -> None:
    response = await client.post("/api/sign-up/", json=body)
    assert response.status == 422
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("validation_error", field)
    assert error["message"]


async def test_malformed_oversized_and_non_json_bodies(client: Client) -> None:
    response = await client.post(
        "/api/sign-up/", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "malformed_json"
    response = await client.post(
        "/api/sign-up/", data=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    assert response.status == 422
    response = await client.post(
        "/api/sign-up/", data=b"x" * (64 * 1024 + 1), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    response = await client.post(
        "/api/sign-up/", data={"username": "alice", "password": PASSWORD}
    )  # an HTML form
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_login_sets_a_hardened_cookie_and_rotates_the_session(client: Client) -> None:
    await sign_up(client, "bob")
    first = await client.post("/api/login/", json={"username": "bob", "password": PASSWORD})
    assert first.status == 200
    cookie = first.cookies["wallet_session"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert len(cookie.value) >= 40
    old = cookie.value
    # Logging in again with the old cookie gives a new id and kills the old one.
    second = await client.post(
        "/api/login/",
        json={"username": "bob", "password": PASSWORD},
        cookies={"wallet_session": old},
    )
    new = second.cookies["wallet_session"].value
    assert new != old
    client.session.cookie_jar.clear()
    stale = await client.get("/api/balance/", cookies={"wallet_session": old})
    assert stale.status == 401
    fresh = await client.get("/api/balance/", cookies={"wallet_session": new})
    assert fresh.status == 200


async def test_a_session_id_the_client_invents_is_not_adopted(client: Client) -> None:
    await sign_up(client, "carol")
    planted = "attacker-chosen-session-id-0123456789abcdef"
    response = await client.post(
        "/api/login/",
        json={"username": "carol", "password": PASSWORD},
        cookies={"wallet_session": planted},
    )
    assert response.cookies["wallet_session"].value != planted
    client.session.cookie_jar.clear()
    assert (await client.get("/api/balance/", cookies={"wallet_session": planted})).status == 401


async def test_secure_cookie_flag_is_a_setting(
    aiohttp_client: AiohttpClient, app_settings: Settings
) -> None:
    app = create_app(app_settings.model_copy(update={"cookie_secure": True}))
    secure_client = await aiohttp_client(app)
    await sign_up(secure_client, "dave")
    response = await secure_client.post(
        "/api/login/", json={"username": "dave", "password": PASSWORD}
    )
    assert response.cookies["wallet_session"]["secure"]


async def test_logout_revokes_the_session_server_side(client: Client, redis_client: Redis) -> None:
    user = await new_user(client, "erin")
    token = user.cookies["wallet_session"]
    assert await redis_client.exists(f"wallet_session_{token}")
    status, _ = await user.post(client, "/api/logout/", None)
    assert status == 204
    assert not await redis_client.exists(f"wallet_session_{token}")
    assert (await user.get(client, "/api/balance/"))[0] == 401
    assert (await user.post(client, "/api/logout/", None))[0] == 401


async def test_endpoints_need_a_session(client: Client) -> None:
    for method, path in [
        ("GET", "/api/balance/"),
        ("POST", "/api/balance/deposit/"),
        ("GET", "/api/balance/deposit/"),
        ("POST", "/api/balance/transfer/"),
        ("GET", "/api/balance/transfer/"),
        ("POST", "/api/logout/"),
    ]:
        response = await client.request(method, path, json={"amount": 1})
        assert response.status == 401, path
        assert (await response.json())["error"]["code"] == "unauthorized"
    forged = await client.get("/api/balance/", cookies={"wallet_session": "forged"})
    assert forged.status == 401


async def test_wrong_password_and_unknown_user_get_the_same_answer(client: Client) -> None:
    await sign_up(client, "frank")
    answers = []
    for name in ("frank", "nobody"):
        response = await client.post(
            "/api/login/", json={"username": name, "password": "wrong password"}
        )
        answers.append((response.status, await response.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401
    assert answers[0][1]["error"]["code"] == "invalid_credentials"


async def test_login_throttling_per_username_and_address(client: Client) -> None:
    await sign_up(client, "grace")
    await sign_up(client, "heidi")
    for _ in range(4):  # three free failures, then each one makes the next attempt wait
        response = await client.post(
            "/api/login/", json={"username": "grace", "password": "nope1234"}
        )
        assert response.status == 401
    slowed = await client.post("/api/login/", json={"username": "GRACE", "password": PASSWORD})
    assert slowed.status == 429
    assert slowed.headers["Retry-After"] == "1"
    assert (await slowed.json())["error"]["code"] == "too_many_attempts"
    # Other users from the same address are not affected.
    await login(client, "heidi")
    # When the wait is over, the right password works again.
    await asyncio.sleep(1.1)
    await login(client, "grace")


async def test_successful_logins_are_never_throttled(client: Client) -> None:
    await sign_up(client, "ivan")
    for _ in range(30):
        await login(client, "ivan")


async def test_openapi_describes_every_contract_endpoint(client: Client) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert operations == {
        ("POST", "/api/sign-up/"),
        ("POST", "/api/login/"),
        ("POST", "/api/logout/"),
        ("GET", "/api/balance/"),
        ("POST", "/api/balance/deposit/"),
        ("GET", "/api/balance/deposit/"),
        ("POST", "/api/balance/transfer/"),
        ("GET", "/api/balance/transfer/"),
    }
    amount = spec["components"]["schemas"]["DepositRequest"]["properties"]["amount"]
    assert (amount["type"], amount["minimum"], amount["maximum"]) == ("integer", 1, 10**12)


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "redis": "ok", "database": "ok"}


async def test_logout_stops_money_at_once_even_with_the_user_cached(
    client: Client, redis_client: Redis
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 100})
    assert status == 201  # the worker now knows alice's cookie
    # Revoked server-side by another process, as a logout on another worker would be.
    await redis_client.delete(f"wallet_session_{alice.cookies['wallet_session']}")
    for path, body in [
        ("/api/balance/deposit/", {"amount": 5}),
        ("/api/balance/transfer/", {"to_user_id": bob.id, "amount": 5}),
    ]:
        status, error = await alice.post(client, path, body)
        assert (status, error["error"]["code"]) == (401, "unauthorized")
    assert await bob.balance(client) == 0


async def test_every_request_gives_the_session_its_idle_timeout_back(
    client: Client, redis_client: Redis
) -> None:
    alice = await new_user(client, "alice")
    key = f"wallet_session_{alice.cookies['wallet_session']}"
    idle_s = 30 * 60
    assert idle_s - 5 <= await redis_client.ttl(key) <= idle_s
    for path, body in [("/api/balance/deposit/", {"amount": 1}), ("/api/balance/", None)]:
        await redis_client.expire(key, 5)
        if body is None:
            status, _ = await alice.get(client, path)
        else:
            status, _ = await alice.post(client, path, body)
        assert status in (200, 201)
        assert idle_s - 5 <= await redis_client.ttl(key) <= idle_s
    # An idle session simply expires in Redis: the next request is 401.
    await redis_client.delete(key)
    assert (await alice.get(client, "/api/balance/"))[0] == 401


async def test_a_session_past_its_absolute_lifetime_is_refused_everywhere(
    client: Client, redis_client: Redis
) -> None:
    alice = await new_user(client, "alice")
    key = f"wallet_session_{alice.cookies['wallet_session']}"
    status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 1})
    assert status == 201
    data = json.loads(cast(bytes, await redis_client.get(key)))
    data["created"] -= 12 * 3600 + 1
    await redis_client.set(key, json.dumps(data), keepttl=True)
    assert (await alice.post(client, "/api/balance/deposit/", {"amount": 1}))[0] == 401
    assert (await alice.get(client, "/api/balance/"))[0] == 401


async def test_a_burst_of_password_hashing_is_shed_not_queued_without_bound(
    aiohttp_client: AiohttpClient, app_settings: Settings, redis_client: Redis, db_engine: object
) -> None:
    limited = app_settings.model_copy(
        update={"sign_up_hash_max_concurrent": 1, "sign_up_hash_max_queued": 1}
    )
    burst_client = await aiohttp_client(create_app(limited))
    responses = await asyncio.gather(
        *(
            burst_client.post("/api/sign-up/", json={"username": f"burst{n}", "password": PASSWORD})
            for n in range(12)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert set(statuses) == {201, 503}, statuses
    busy = next(r for r in responses if r.status == 503)
    assert busy.headers["Retry-After"] == "1"
    assert (await busy.json())["error"]["code"] == "server_busy"
    # Once the burst is over, hashing works again.
    await sign_up(burst_client, "after-burst")
