"""Sign-up, login, logout, sessions and throttling through HTTP."""

import asyncio
import json
import threading
from typing import cast

import pytest
from aiohttp import ClientResponse
from argon2 import PasswordHasher
from pytest_aiohttp import AiohttpClient

from service.http.app import create_app
from service.http.state import PASSWORDS, SESSIONS
from service.redis import keyspace
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.http_helpers import PASSWORD, Client, LoggedIn, login, new_user, sign_up

NEW_PASSWORD = "new horse battery staple"


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


async def test_logout_revokes_the_session_server_side(
    client: Client, redis_client: RedisClient
) -> None:
    user = await new_user(client, "erin")
    token = user.cookies["wallet_session"]
    assert await redis_client.exists(str(keyspace.session(token)))
    status, _ = await user.post(client, "/api/logout/", None)
    assert status == 204
    assert not await redis_client.exists(str(keyspace.session(token)))
    assert not await redis_client.exists(keyspace.sessions_of_user(user.id))
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
        ("POST", "/api/logout/all/"),
        ("POST", "/api/password/"),
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
        ("POST", "/api/logout/all/"),
        ("POST", "/api/password/"),
        ("GET", "/api/balance/"),
        ("POST", "/api/balance/deposit/"),
        ("GET", "/api/balance/deposit/"),
        ("POST", "/api/balance/transfer/"),
        ("GET", "/api/balance/transfer/"),
        ("POST", "/api/balance/transfer/batch/"),
        ("POST", "/api/balance/transfer/{id}/refund/"),
        ("GET", "/api/balance/statement/"),
        ("POST", "/api/holds/"),
        ("GET", "/api/holds/"),
        ("GET", "/api/holds/{id}/"),
        ("POST", "/api/holds/{id}/capture/"),
        ("POST", "/api/holds/{id}/void/"),
    }
    amount = spec["components"]["schemas"]["DepositRequest"]["properties"]["amount"]
    assert (amount["type"], amount["minimum"], amount["maximum"]) == ("integer", 1, 10**12)


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "redis": "ok", "database": "ok"}


async def test_logout_stops_money_at_once_even_with_the_user_cached(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 100})
    assert status == 201  # the worker now knows alice's cookie
    # Revoked server-side by another process, as a logout on another worker would be.
    await redis_client.delete(str(keyspace.session(alice.cookies["wallet_session"])))
    for path, body in [
        ("/api/balance/deposit/", {"amount": 5}),
        ("/api/balance/transfer/", {"to_user_id": bob.id, "amount": 5}),
    ]:
        status, error = await alice.post(client, path, body)
        assert (status, error["error"]["code"]) == (401, "unauthorized")
    assert await bob.balance(client) == 0


async def test_every_request_gives_the_session_its_idle_timeout_back(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    key = str(keyspace.session(alice.cookies["wallet_session"]))
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
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    key = str(keyspace.session(alice.cookies["wallet_session"]))
    status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 1})
    assert status == 201
    data = json.loads(cast(bytes, await redis_client.get(key)))
    data["created"] -= 12 * 3600 + 1
    await redis_client.set(key, json.dumps(data), keepttl=True)
    assert (await alice.post(client, "/api/balance/deposit/", {"amount": 1}))[0] == 401
    assert (await alice.get(client, "/api/balance/"))[0] == 401


async def test_a_burst_of_password_hashing_is_shed_not_queued_without_bound(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limited = app_settings.model_copy(
        update={"sign_up_hash_max_concurrent": 1, "sign_up_hash_max_queued": 1}
    )
    burst_client = await aiohttp_client(create_app(limited))
    # The one hashing thread is kept busy until the burst is over, so that how fast this
    # machine hashes cannot decide the outcome: one hash runs, one waits, ten are shed.
    release = threading.Event()
    real_hash = PasswordHasher.hash

    def held_hash(hasher: PasswordHasher, password: str | bytes, **kwargs: object) -> str:
        assert release.wait(timeout=30), "the burst was never released"
        return real_hash(hasher, password)

    monkeypatch.setattr(PasswordHasher, "hash", held_hash)
    requests = [
        asyncio.create_task(
            burst_client.post("/api/sign-up/", json={"username": f"burst{n}", "password": PASSWORD})
        )
        for n in range(12)
    ]
    try:
        shed: list[asyncio.Task[ClientResponse]] = []
        async with asyncio.timeout(30):
            while len(shed) < 10:
                done, _ = await asyncio.wait(
                    [r for r in requests if r not in shed], return_when=asyncio.FIRST_COMPLETED
                )
                shed.extend(done)
    finally:
        release.set()
    responses = await asyncio.gather(*requests)
    assert sorted(r.status for r in responses) == [201] * 2 + [503] * 10
    for task in shed:
        busy = task.result()
        assert busy.status == 503
        assert busy.headers["Retry-After"] == "1"
        assert (await busy.json())["error"]["code"] == "server_busy"
    # Once the burst is over, hashing works again.
    await sign_up(burst_client, "after-burst")


async def assert_ended(client: Client, user: LoggedIn, recipient_id: int) -> None:
    """Every endpoint refuses the session, money ones included."""
    for path, body in [
        ("/api/balance/deposit/", {"amount": 7}),
        ("/api/balance/transfer/", {"to_user_id": recipient_id, "amount": 7}),
        ("/api/logout/", None),
        ("/api/logout/all/", None),
        ("/api/password/", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    ]:
        status, error = await user.post(client, path, body)
        assert (status, error["error"]["code"]) == (401, "unauthorized"), path
    for path in ("/api/balance/", "/api/balance/deposit/", "/api/balance/transfer/"):
        status, error = await user.get(client, path)
        assert (status, error["error"]["code"]) == (401, "unauthorized"), path


async def change_password(
    client: Client, user: LoggedIn, current: str = PASSWORD, new: str = NEW_PASSWORD
) -> tuple[int, str | None]:
    """The status and the new session cookie, if one was set."""
    response = await client.post(
        "/api/password/",
        json={"current_password": current, "new_password": new},
        cookies=user.cookies,
    )
    client.session.cookie_jar.clear()
    cookie = response.cookies.get("wallet_session")
    return response.status, None if cookie is None else cookie.value


async def test_a_password_change_ends_every_other_session_and_renews_this_one(
    client: Client, redis_client: RedisClient
) -> None:
    bob = await new_user(client, "bob")
    phone = await new_user(client, "alice", deposit_kopecks=100)
    laptop = await login(client, "alice")
    status, _ = await laptop.post(client, "/api/balance/deposit/", {"amount": 100})
    assert status == 201  # the process that served it now has the laptop's cookie cached
    status, renewed_cookie = await change_password(client, phone)
    assert status == 204
    assert renewed_cookie is not None
    assert renewed_cookie != phone.cookies["wallet_session"]
    for old in (laptop, phone):
        await assert_ended(client, old, bob.id)
        assert keyspace.session(old.cookies["wallet_session"]) is not None
        assert not await redis_client.exists(str(keyspace.session(old.cookies["wallet_session"])))
    renewed = LoggedIn(phone.id, phone.username, {"wallet_session": renewed_cookie})
    assert await renewed.balance(client) == 200
    assert await bob.balance(client) == 0
    assert await redis_client.zrange(keyspace.sessions_of_user(phone.id), 0, -1) == [
        renewed_cookie.encode()
    ]
    response = await client.post("/api/login/", json={"username": "alice", "password": PASSWORD})
    assert response.status == 401
    await login(client, "alice", NEW_PASSWORD)


async def test_logout_all_ends_every_session_of_the_user_and_no_other(
    client: Client, redis_client: RedisClient
) -> None:
    bob = await new_user(client, "bob")
    phone = await new_user(client, "alice", deposit_kopecks=100)
    laptop = await login(client, "alice")
    status, _ = await laptop.post(client, "/api/balance/deposit/", {"amount": 100})
    assert status == 201
    response = await client.post("/api/logout/all/", cookies=phone.cookies)
    assert response.status == 204
    assert response.cookies["wallet_session"].value == ""  # the cookie is cleared
    client.session.cookie_jar.clear()
    for old in (phone, laptop):
        await assert_ended(client, old, bob.id)
    assert not await redis_client.exists(keyspace.sessions_of_user(phone.id))
    assert await bob.balance(client) == 0
    again = await login(client, "alice")  # the password is unchanged
    assert await again.balance(client) == 200


async def test_a_wrong_current_password_changes_nothing(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice")
    other = await login(client, "alice")
    for current in ("wrong password", NEW_PASSWORD):
        status, cookie = await change_password(client, alice, current=current)
        assert (status, cookie) == (401, None)
    response = await client.post(
        "/api/password/",
        json={"current_password": "wrong password", "new_password": NEW_PASSWORD},
        cookies=alice.cookies,
    )
    assert (await response.json())["error"]["code"] == "invalid_credentials"
    assert await alice.balance(client) == 0
    assert await other.balance(client) == 0
    await login(client, "alice", PASSWORD)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "x" * 129}, "new_password"),
        ({"current_password": PASSWORD}, "new_password"),
        ({"new_password": NEW_PASSWORD}, "current_password"),
        ({"current_password": PASSWORD, "new_password": 12345678}, "new_password"),
        ({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "user_id": 1}, "user_id"),
    ],
)
async def test_password_change_validation(
    client: Client, body: dict[str, object], field: str
) -> None:
    alice = await new_user(client, "alice")
    status, answer = await alice.post(client, "/api/password/", body)
    assert status == 422
    assert (answer["error"]["code"], answer["error"]["field"]) == ("validation_error", field)
    assert await alice.balance(client) == 0  # the session is untouched
    await login(client, "alice", PASSWORD)


async def test_a_wrong_current_password_counts_as_a_failed_login(
    client: Client, redis_client: RedisClient, app_settings: Settings
) -> None:
    alice = await new_user(client, "alice")
    # The free failures, then one more: it makes this client wait before the next try.
    for _ in range(app_settings.login_failures_before_delay + 1):
        assert (await change_password(client, alice, current="wrong password"))[0] == 401
    changed = await client.post(
        "/api/password/",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        cookies=alice.cookies,
    )
    assert changed.status == 429
    assert (await changed.json())["error"]["code"] == "too_many_attempts"
    assert int(changed.headers["Retry-After"]) >= 1
    locked = await client.post("/api/login/", json={"username": "alice", "password": PASSWORD})
    assert locked.status == 429
    assert await alice.balance(client) == 0  # throttled, not logged out
    # The wait passes.
    await redis_client.delete(keyspace.login_failures_of_user_at_address("alice", "127.0.0.1"))
    assert (await change_password(client, alice))[0] == 204


async def test_logout_all_racing_deposits_of_another_session(client: Client) -> None:
    phone = await new_user(client, "alice")
    laptop = await login(client, "alice")

    async def deposit() -> int:
        return (await laptop.post(client, "/api/balance/deposit/", {"amount": 1}))[0]

    racing = await asyncio.gather(
        *(deposit() for _ in range(20)),
        phone.post(client, "/api/logout/all/", None),
        *(deposit() for _ in range(20)),
    )
    logout_all = cast(tuple[int, object], racing.pop(20))
    assert logout_all[0] == 204
    statuses = cast(list[int], racing)
    assert set(statuses) <= {201, 401}, statuses
    assert [await deposit() for _ in range(5)] == [401] * 5
    again = await login(client, "alice")
    # A refused deposit moved nothing; every 201 was applied.
    assert await again.balance(client) == statuses.count(201)


@pytest.mark.parametrize("ending", ["password", "logout-all"])
async def test_sessions_end_on_every_process_at_once(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: object,
    ending: str,
) -> None:
    """Two apps on one Redis are two API processes, each with its own cache of cookies."""
    first = await aiohttp_client(create_app(app_settings))
    second = await aiohttp_client(create_app(app_settings))
    bob = await new_user(first, "bob")
    phone = await new_user(first, "alice")
    laptop = await login(first, "alice")
    status, _ = await laptop.post(second, "/api/balance/deposit/", {"amount": 100})
    assert status == 201
    laptop_cookie = laptop.cookies["wallet_session"]
    assert second.app[SESSIONS].cached_user(laptop_cookie) is not None
    if ending == "password":
        assert (await change_password(first, phone))[0] == 204
    else:
        assert (await phone.post(first, "/api/logout/all/", None))[0] == 204
    await assert_ended(second, laptop, bob.id)
    assert second.app[SESSIONS].cached_user(laptop_cookie) is None  # forgotten when refused
    password = NEW_PASSWORD if ending == "password" else PASSWORD
    assert await (await login(second, "alice", password)).balance(second) == 100
    assert await bob.balance(second) == 0


async def test_a_login_beyond_the_cap_ends_the_oldest_session(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: object,
) -> None:
    capped = await aiohttp_client(
        create_app(app_settings.model_copy(update={"session_max_per_user": 2}))
    )
    await sign_up(capped, "alice")
    oldest, middle, newest = [await login(capped, "alice") for _ in range(3)]
    assert (await oldest.get(capped, "/api/balance/"))[0] == 401
    assert await middle.balance(capped) == 0
    assert await newest.balance(capped) == 0
    assert await redis_client.zcard(keyspace.sessions_of_user(oldest.id)) == 2


@pytest.mark.in_process_only
async def test_a_login_that_checked_the_old_password_keeps_no_session(
    client: Client, redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password changes while a login with the old one is between its check of the
    password and the start of its session: that session must not outlive the change."""
    alice = await new_user(client, "alice")
    passwords = client.app[PASSWORDS]
    verify = passwords.verify
    changes: list[int] = []

    async def verify_then_change(password_hash: str | None, password: str) -> bool:
        verified = await verify(password_hash, password)
        if not changes:  # the login's check; the change's own check comes next
            changes.append(0)
            changes[0] = (await change_password(client, alice))[0]
        return verified

    monkeypatch.setattr(passwords, "verify", verify_then_change)
    response = await client.post("/api/login/", json={"username": "alice", "password": PASSWORD})
    assert changes == [204]
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_credentials"
    assert "wallet_session" not in response.cookies
    # Only the session the change gave its own client is left.
    # SCAN, not KEYS: on a cluster redis-py sends KEYS to one node, SCAN to every primary.
    assert len([key async for key in redis_client.scan_iter(match="wallet_session:*")]) == 1
    assert await redis_client.zcard(keyspace.sessions_of_user(alice.id)) == 1
