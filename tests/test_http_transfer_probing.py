"""Probing for users through transfers, against real Redis and PostgreSQL: with a zero
balance, 404 recipient_not_found against 409 insufficient_funds tells which ids and names
exist. A user who gets many 404s in a window gets 429 for every transfer until it ends."""

from service.redis.types import RedisClient
from tests.support.helpers import snapshot
from tests.support.http_helpers import MakeClient, new_user

TRANSFER = "/api/balance/transfer/"


async def test_a_user_who_keeps_naming_no_one_is_refused_for_a_while(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(recipient_not_found_max_per_user=3)
    prober = await new_user(client, "prober")  # a zero balance
    target = await new_user(client, "target")
    assert (await prober.post(client, TRANSFER, {"to_user_id": target.id, "amount": 1}))[0] == 409
    for body in ({"to_user_id": 999_001}, {"to_username": "ghost"}, {"to_user_id": 999_002}):
        status, error = await prober.post(client, TRANSFER, {**body, "amount": 1})
        assert (status, error["error"]["code"]) == (404, "recipient_not_found")
    before = await snapshot(redis_client)
    # Now an id that exists and one that does not get the same answer.
    for body in ({"to_user_id": target.id}, {"to_user_id": 999_003}, {"to_username": "target"}):
        response = await client.post(TRANSFER, json={**body, "amount": 1}, cookies=prober.cookies)
        assert response.status == 429
        assert 3590 <= int(response.headers["Retry-After"]) <= 3600
        assert (await response.json())["error"]["code"] == "too_many_attempts"
    assert await snapshot(redis_client) == before  # a refused transfer changes nothing
    # Another user is not affected.
    other = await new_user(client, "other")
    assert (await other.post(client, TRANSFER, {"to_user_id": 999_001, "amount": 1}))[0] == 404


async def test_a_retry_of_an_answered_transfer_is_still_answered_as_before(
    make_client: MakeClient,
) -> None:
    client = await make_client(recipient_not_found_max_per_user=2)
    payer = await new_user(client, "payer", deposit_kopecks=100)
    payee = await new_user(client, "payee")
    pay, pay_key = {"to_user_id": payee.id, "amount": 5}, {"Idempotency-Key": "pay-1"}
    miss, miss_key = {"to_user_id": 999_001, "amount": 5}, {"Idempotency-Key": "miss-1"}
    paid = await payer.post(client, TRANSFER, pay, **pay_key)
    assert paid[0] == 201
    missed = await payer.post(client, TRANSFER, miss, **miss_key)
    assert missed[0] == 404
    assert (await payer.post(client, TRANSFER, {"to_user_id": 999_002, "amount": 5}))[0] == 404
    # Refused now, but a retry gets its first answer back: its first try may have moved
    # money, and a replay tells nothing new.
    assert (await payer.post(client, TRANSFER, pay))[0] == 429
    assert await payer.post(client, TRANSFER, pay, **pay_key) == paid
    assert await payer.post(client, TRANSFER, miss, **miss_key) == missed
    assert await payer.balance(client) == 95


async def test_holds_and_batches_count_and_are_refused_alike(make_client: MakeClient) -> None:
    """Every payment that names a recipient probes alike: a hold's and a batch's misses
    count with the transfers', and then all three are refused."""
    client = await make_client(recipient_not_found_max_per_user=2)
    prober = await new_user(client, "prober", deposit_kopecks=100)
    target = await new_user(client, "target")
    status, _ = await prober.post(client, "/api/holds/", {"to_user_id": 999_001, "amount": 1})
    assert status == 404
    batch = {
        "transfers": [{"to_user_id": target.id, "amount": 1}, {"to_username": "ghost", "amount": 1}]
    }
    status, error = await prober.post(client, "/api/balance/transfer/batch/", batch)
    assert (status, error["error"]["field"]) == (404, "transfers[1].to_username")
    for path, body in (
        (TRANSFER, {"to_user_id": target.id, "amount": 1}),
        ("/api/holds/", {"to_user_id": target.id, "amount": 1}),
        ("/api/balance/transfer/batch/", {"transfers": [{"to_user_id": target.id, "amount": 1}]}),
    ):
        status, error = await prober.post(client, path, body)
        assert (status, error["error"]["code"]) == (429, "too_many_attempts"), path
    assert await prober.balance(client) == 100
