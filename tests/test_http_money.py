"""Balance, deposit and transfer through HTTP: success, every refusal, idempotency."""

import logging
import re
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from service.domain.refusals import INTERNAL_ERROR
from service.http.app import create_app
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.helpers import snapshot, snapshot_of_data
from tests.support.http_helpers import Client, error_of, new_user


async def test_balance_in_kopecks_and_rubles(client: Client) -> None:
    user = await new_user(client, "alice", deposit_kopecks=10_100)
    status, body = await user.get(client, "/api/balance/")
    assert status == 200
    assert body == {
        "user_id": user.id,
        "balance_kopecks": 10_100,
        "balance": "101.00",
        "held_kopecks": 0,
        "available_kopecks": 10_100,
        "available": "101.00",
        "currency": "RUB",
    }


async def test_deposit_returns_the_transaction(client: Client) -> None:
    user = await new_user(client, "alice")
    status, body = await user.post(client, "/api/balance/deposit/", {"amount": 2_000})
    assert status == 201
    assert body == {
        "id": body["id"],
        "kind": "deposit",
        "amount": 2_000,
        "amount_rub": "20.00",
        "from_user_id": None,
        "to_user_id": user.id,
        "created_at": body["created_at"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["created_at"])
    assert await user.balance(client) == 2_000


BAD_AMOUNTS: list[Any] = [
    "10", 1.0, 10.5, True, None, 0, -1, -0, 10**12 + 1, 2**53 - 1, 2**53 + 1, 2**63, [1], {"v": 1},
]  # fmt: skip


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bad_amounts_are_refused_and_change_nothing(
    client: Client, redis_client: RedisClient, amount: Any
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=500)
    bob = await new_user(client, "bob")
    before = await snapshot(redis_client)
    status, body = await alice.post(client, "/api/balance/deposit/", {"amount": amount})
    assert (status, error_of(body)) == (422, ("validation_error", "amount"))
    status, body = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": amount}
    )
    assert (status, error_of(body)) == (422, ("validation_error", "amount"))
    after = await snapshot(redis_client)
    sessions = {k for k in after if k.startswith(b"wallet_session:")}
    assert {k: v for k, v in after.items() if k not in sessions} == {
        k: v for k, v in before.items() if k not in sessions
    }


async def test_amount_limit_edge_is_accepted(client: Client) -> None:
    alice = await new_user(client, "alice")
    status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 10**12})
    assert status == 201


async def test_deposit_over_the_balance_limit(client: Client) -> None:
    alice = await new_user(client, "alice")
    for _ in range(1_000):
        status, _ = await alice.post(client, "/api/balance/deposit/", {"amount": 10**12})
        assert status == 201
    status, body = await alice.post(client, "/api/balance/deposit/", {"amount": 1})
    assert (status, error_of(body)) == (422, ("balance_limit_exceeded", None))
    assert await alice.balance(client) == 10**15


async def test_transfer_by_id_and_by_username(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "Bob")
    status, body = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 300}
    )
    assert status == 201
    assert (body["kind"], body["from_user_id"], body["to_user_id"], body["amount_rub"]) == (
        "transfer",
        alice.id,
        bob.id,
        "3.00",
    )
    status, body = await alice.post(
        client, "/api/balance/transfer/", {"to_username": "bOB", "amount": 200}
    )
    assert status == 201
    assert body["to_user_id"] == bob.id
    assert await alice.balance(client) == 500
    assert await bob.balance(client) == 500


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"to_user_id": 999_999, "amount": 10}, 404, "recipient_not_found", None),
        ({"to_username": "nobody", "amount": 10}, 404, "recipient_not_found", None),
        ({"to_user_id": "BOB", "amount": 10_000}, 409, "insufficient_funds", None),
        ({"to_user_id": "ALICE", "amount": 10}, 422, "self_transfer", "to_user_id"),
        ({"to_username": "ALICE", "amount": 10}, 422, "self_transfer", "to_username"),
        ({"to_user_id": "BOB", "to_username": "bob", "amount": 10}, 422, "validation_error", None),
        ({"amount": 10}, 422, "validation_error", None),
        ({"to_user_id": "BOB"}, 422, "validation_error", "amount"),
        ({"to_user_id": "BOB", "amount": 10, "from_user_id": "BOB"}, 422, "validation_error",
         "from_user_id"),
        ({"to_user_id": "BOB", "amount": 10, "user_id": "BOB"}, 422, "validation_error", "user_id"),
        ({"to_user_id": 0, "amount": 10}, 422, "validation_error", "to_user_id"),
        ({"to_user_id": 1.5, "amount": 10}, 422, "validation_error", "to_user_id"),
    ],
)  # fmt: skip
async def test_transfer_refusals_change_nothing(
    client: Client,
    redis_client: RedisClient,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob", deposit_kopecks=50)
    ids = {"ALICE": alice.id, "BOB": bob.id}
    body = {k: ids.get(v, v) if isinstance(v, str) and k != "to_username" else v
            for k, v in body.items()}  # fmt: skip
    before = await snapshot_of_data(redis_client)
    got_status, got = await alice.post(client, "/api/balance/transfer/", body)
    assert (got_status, error_of(got)) == (status, (code, field))
    assert got["error"]["message"]
    assert await snapshot_of_data(redis_client) == before
    assert (await alice.balance(client), await bob.balance(client)) == (1_000, 50)


async def test_unknown_query_parameters_are_refused(client: Client) -> None:
    alice = await new_user(client, "alice")
    response = await client.post(
        "/api/balance/deposit/?user_id=1", json={"amount": 5}, cookies=alice.cookies
    )
    assert response.status == 422
    assert error_of(await response.json()) == ("validation_error", "user_id")
    assert await alice.balance(client) == 0


async def test_idempotent_deposit_returns_the_first_response(client: Client) -> None:
    alice = await new_user(client, "alice")
    first = await alice.post(
        client, "/api/balance/deposit/", {"amount": 700}, **{"Idempotency-Key": "k1"}
    )
    again = await alice.post(
        client, "/api/balance/deposit/", {"amount": 700}, **{"Idempotency-Key": "k1"}
    )
    assert first[0] == again[0] == 201
    assert first[1] == again[1]
    assert await alice.balance(client) == 700
    status, body = await alice.post(
        client, "/api/balance/deposit/", {"amount": 701}, **{"Idempotency-Key": "k1"}
    )
    assert (status, error_of(body)) == (422, ("idempotency_key_reused", None))
    # Keys are per user and shared by both endpoints.
    bob = await new_user(client, "bob")
    status, body = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 700},
        **{"Idempotency-Key": "k1"},
    )  # fmt: skip
    assert (status, error_of(body)) == (422, ("idempotency_key_reused", None))
    status, _ = await bob.post(
        client, "/api/balance/deposit/", {"amount": 1}, **{"Idempotency-Key": "k1"}
    )
    assert status == 201
    assert await alice.balance(client) == 700


async def test_idempotent_transfer_replays_refusals_and_resolves_usernames(client: Client) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    headers = {"Idempotency-Key": "pay-bob-1"}
    first = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 100}, **headers
    )
    assert first[0] == 409
    await alice.post(client, "/api/balance/deposit/", {"amount": 1_000})
    # The same request is compared after to_username is resolved, so it is the same request.
    again = await alice.post(
        client, "/api/balance/transfer/", {"to_username": "BOB", "amount": 100}, **headers
    )
    assert again == first
    assert await bob.balance(client) == 0
    second = {"Idempotency-Key": "pay-bob-2"}
    fresh = await alice.post(
        client, "/api/balance/transfer/", {"to_username": "bob", "amount": 100}, **second
    )
    replay = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 100}, **second
    )
    assert fresh[0] == 201
    assert replay == fresh
    assert await bob.balance(client) == 100


async def test_a_name_registered_later_never_turns_a_replay_into_a_payment(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    key = {"Idempotency-Key": "K"}
    body = {"to_username": "ghost", "amount": 100}
    first = await alice.post(client, "/api/balance/transfer/", body, **key)
    assert (first[0], error_of(first[1])) == (404, ("recipient_not_found", None))

    ghost = await new_user(client, "Ghost")
    alices_stream = keyspace.txn_stream(keyspace.bucket_of(alice.id))
    stream_before = await redis_client.xlen(alices_stream)
    response = await client.post(
        "/api/balance/transfer/", json=body, cookies=alice.cookies, headers=key
    )
    assert (response.status, await response.json()) == first
    assert response.headers["Idempotent-Replayed"] == "true"
    spelled = {"to_username": "GHOST", "amount": 100}  # names are one regardless of case
    assert await alice.post(client, "/api/balance/transfer/", spelled, **key) == first
    # The first request resolved to no one: naming ghost's id is another request.
    by_id = {"to_user_id": ghost.id, "amount": 100}
    status, refused = await alice.post(client, "/api/balance/transfer/", by_id, **key)
    assert (status, error_of(refused)) == (422, ("idempotency_key_reused", None))
    assert await redis_client.xlen(alices_stream) == stream_before
    assert (await alice.balance(client), await ghost.balance(client)) == (1_000, 0)
    # A new key pays the name as it now is.
    status, paid = await alice.post(
        client, "/api/balance/transfer/", body, **{"Idempotency-Key": "K2"}
    )
    assert (status, paid["to_user_id"]) == (201, ghost.id)


async def test_a_replayed_answer_says_so_in_a_header(client: Client) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")

    async def post(path: str, body: dict[str, Any], key: str) -> tuple[int, str | None]:
        response = await client.post(
            path, json=body, cookies=alice.cookies, headers={"Idempotency-Key": key}
        )
        return response.status, response.headers.get("Idempotent-Replayed")

    transfer = {"to_user_id": bob.id, "amount": 100}
    # A recorded refusal, then a 201: the first answers are not replays, the repeats are.
    assert await post("/api/balance/transfer/", transfer, "t") == (409, None)
    assert await post("/api/balance/transfer/", transfer, "t") == (409, "true")
    assert await post("/api/balance/deposit/", {"amount": 500}, "d") == (201, None)
    assert await post("/api/balance/deposit/", {"amount": 500}, "d") == (201, "true")
    # Another request under a used key is refused, not replayed.
    assert await post("/api/balance/deposit/", {"amount": 501}, "d") == (422, None)
    assert await post("/api/balance/deposit/", {"amount": 1}, "fresh") == (201, None)


@pytest.mark.parametrize("key", ["", "x" * 65, "naïve", "tab\there"])
async def test_malformed_idempotency_keys_are_refused(client: Client, key: str) -> None:
    alice = await new_user(client, "alice")
    response = await client.post(
        "/api/balance/deposit/",
        json={"amount": 5},
        cookies=alice.cookies,
        headers={"Idempotency-Key": key},
    )
    assert response.status == 422
    assert error_of(await response.json()) == ("validation_error", "Idempotency-Key")
    assert await alice.balance(client) == 0


async def test_unrecorded_validation_refusal_does_not_burn_the_key(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=100)
    bob = await new_user(client, "bob")
    headers = {"Idempotency-Key": "once"}
    status, _ = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": alice.id, "amount": 5}, **headers
    )
    assert status == 422
    status, _ = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 5}, **headers
    )
    assert status == 201


@pytest.mark.in_process_only
async def test_an_unexpected_failure_is_a_json_500_without_details(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await new_user(client, "alice")

    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(MoneyScripts, "deposit", broken)
    response = await client.post("/api/balance/deposit/", json={"amount": 5}, cookies=alice.cookies)
    assert response.status == 500
    body = await response.json()
    assert body == {"error": {"code": "internal_error", "message": INTERNAL_ERROR.message}}
    assert "secret" not in await response.text()


async def test_a_client_that_hangs_up_is_not_logged_as_a_failure(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp import ClientError, web

    from service.http.errors import error_middleware

    async def hang_up(request: web.Request) -> web.Response:
        raise ConnectionResetError("Connection lost")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", hang_up)
    test_client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="wallet.http"):
        try:
            response = await test_client.get("/")
            assert response.status != 500 or "internal_error" not in await response.text()
        except ClientError:
            pass  # the server dropped the connection, as it should
    assert "unhandled error" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "headers", "status", "field"),
    [
        (b'{"amount": 1, "amount": 100}', {}, 422, "amount"),
        (b'{"to_user_id": 2, "to_username": null, "amount": 1}', {}, 422, None),
        (b'{"amount": NaN}', {}, 400, None),
        (b'{"amount": Infinity}', {}, 400, None),
        (b'{"amount": 1\xff}', {}, 400, None),
        ('{"amount": 1}'.encode("utf-16"), {}, 400, None),
        (b'{"amount": 1}', {"Content-Encoding": "gzip"}, 400, None),
        (b"[" * 100_000 + b"]" * 100_000, {}, 413, None),
        (b"[" * 30_000 + b"]" * 30_000, {}, 400, None),
    ],
)
async def test_ambiguous_or_undecodable_bodies_move_no_money(
    client: Client,
    redis_client: RedisClient,
    raw: bytes,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=500)
    await new_user(client, "bob")
    before = await snapshot(redis_client)
    for path in ("/api/balance/deposit/", "/api/balance/transfer/"):
        response = await client.post(
            path,
            data=raw,
            cookies=alice.cookies,
            # aiohttp drops a connection whose body it could not decode: one each.
            headers={"Content-Type": "application/json", "Connection": "close", **headers},
        )
        body = await response.json()
        assert response.status == status, body
        if status == 422:
            assert body["error"]["code"] == "validation_error"
        if field is not None:
            assert body["error"]["field"] == field
    assert await alice.balance(client) == 500
    after = await snapshot(redis_client)
    assert {k: v for k, v in after.items() if not k.startswith(b"wallet_session:")} == {
        k: v for k, v in before.items() if not k.startswith(b"wallet_session:")
    }


async def test_money_is_refused_with_503_until_redis_is_rebuilt(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=100)
    await redis_client.delete(keyspace.txn_seq(keyspace.bucket_of(alice.id)))
    status, body = await alice.post(client, "/api/balance/deposit/", {"amount": 5})
    assert (status, body["error"]["code"]) == (503, "wallet_unavailable")
    assert await alice.balance(client) == 100


@pytest.mark.in_process_only
async def test_an_unreachable_backend_is_503_and_a_bug_stays_500(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    alice = await new_user(client, "alice")
    closed_transport = RuntimeError(
        "unable to perform operation on <TCPTransport closed=True reading=False 0x7f3a>;"
        " the handler is closed"
    )
    for failure, status, code in [
        (RedisConnectionError("Connection refused"), 503, "service_unavailable"),
        # uvloop's word for a connection Redis closed while it opened: an outage too.
        (closed_transport, 503, "service_unavailable"),
        (ResponseError("invariant: stored balance out of range"), 500, "internal_error"),
    ]:

        async def failing(*args: object, failure: Exception = failure) -> None:
            raise failure

        monkeypatch.setattr(MoneyScripts, "deposit", failing)
        response = await client.post(
            "/api/balance/deposit/", json={"amount": 5}, cookies=alice.cookies
        )
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
        assert ("Retry-After" in response.headers) == (status == 503)


async def test_a_database_that_does_not_exist_is_503_as_readyz_says(
    aiohttp_client: AiohttpClient, app_settings: Settings, redis_client: RedisClient
) -> None:
    server = app_settings.database_url.rsplit("/", 1)[0]
    settings = app_settings.model_copy(update={"database_url": f"{server}/no_such_database"})
    missing = await aiohttp_client(create_app(settings))
    ready = await missing.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["database"].startswith("unavailable")
    for path, body in [
        ("/api/sign-up/", {"username": "alice", "password": "correct horse battery"}),
        ("/api/login/", {"username": "alice", "password": "correct horse battery"}),
    ]:
        response = await missing.post(path, json=body)
        assert response.status == 503, await response.text()
        assert (await response.json())["error"]["code"] == "service_unavailable"
        assert response.headers["Retry-After"] == "1"
