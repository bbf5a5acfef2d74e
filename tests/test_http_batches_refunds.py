"""Batch transfers and refunds through HTTP: every row of the contract's "Batch
transfers" and "Refunds", all or nothing, who may refund, idempotency and concurrency."""

import asyncio
from typing import Any

import pytest

from service.redis.types import RedisClient
from tests.support.helpers import snapshot_of_data
from tests.support.http_helpers import Client, LoggedIn, error_of, new_user

BATCH = "/api/balance/transfer/batch/"


async def transfer(sender: LoggedIn, client: Client, to: LoggedIn, amount: int) -> dict[str, Any]:
    status, body = await sender.post(
        client, "/api/balance/transfer/", {"to_user_id": to.id, "amount": amount}
    )
    assert status == 201, body
    return dict(body)


async def test_a_batch_pays_every_leg_in_order(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    legs = [
        {"to_user_id": bob.id, "amount": 100},
        {"to_username": "CAROL", "amount": 250},
        {"to_user_id": bob.id, "amount": 1},
    ]
    status, body = await alice.post(client, BATCH, {"transfers": legs})
    assert status == 201, body
    items = body["items"]
    assert [(i["kind"], i["from_user_id"], i["to_user_id"], i["amount"]) for i in items] == [
        ("transfer", alice.id, bob.id, 100),
        ("transfer", alice.id, carol.id, 250),
        ("transfer", alice.id, bob.id, 1),
    ]
    assert [i["id"] for i in items] == [items[0]["id"] + n for n in range(3)]
    assert len({i["created_at"] for i in items}) == 1
    assert (await alice.balance(client), await bob.balance(client)) == (649, 101)
    assert await carol.balance(client) == 250
    status, out = await alice.get(client, "/api/balance/transfer/", direction="out")
    assert [i["id"] for i in out["items"]] == [i["id"] for i in reversed(items)]
    assert [i["balance_after_kopecks"] for i in out["items"]] == [649, 650, 900]


@pytest.mark.parametrize(
    ("legs", "status", "code", "field"),
    [
        ([("BOB", 100), ("BOB", 200), ("BOB", 201)], 409, "insufficient_funds",
         "transfers[2].amount"),
        ([("BOB", 100), ("@nobody", 1)], 404, "recipient_not_found", "transfers[1].to_username"),
        ([("BOB", 100), (999_999, 1)], 404, "recipient_not_found", "transfers[1].to_user_id"),
        ([("BOB", 1), ("ALICE", 1)], 422, "self_transfer", "transfers[1].to_user_id"),
        ([("BOB", 1), ("@alice", 1)], 422, "self_transfer", "transfers[1].to_username"),
        ([("BOB", 1), ("BOB", 0)], 422, "validation_error", "transfers[1].amount"),
        ([("BOB", 1), ("BOB", 1.0)], 422, "validation_error", "transfers[1].amount"),
        ([], 422, "validation_error", "transfers"),
        ([("BOB", 1)] * 101, 422, "validation_error", "transfers"),
    ],
)  # fmt: skip
async def test_a_refused_batch_moves_nothing_and_names_its_leg(
    client: Client,
    redis_client: RedisClient,
    legs: list[tuple[Any, Any]],
    status: int,
    code: str,
    field: str,
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=500)
    bob = await new_user(client, "bob")
    ids = {"ALICE": alice.id, "BOB": bob.id}
    body = {
        "transfers": [
            {"to_username": to[1:], "amount": amount}
            if isinstance(to, str) and to.startswith("@")
            else {"to_user_id": ids.get(to, to), "amount": amount}
            for to, amount in legs
        ]
    }
    before = await snapshot_of_data(redis_client)
    got_status, got = await alice.post(client, BATCH, body)
    assert (got_status, error_of(got)) == (status, (code, field))
    assert await snapshot_of_data(redis_client) == before


async def test_a_hundred_legs_and_the_available_balance(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    status, _created = await alice.post(
        client, "/api/holds/", {"to_user_id": bob.id, "amount": 900}
    )
    assert status == 201
    legs = [{"to_user_id": bob.id, "amount": 1} for _ in range(100)]
    status, body = await alice.post(client, BATCH, {"transfers": legs})
    assert (status, len(body["items"])) == (201, 100)
    status, refused = await alice.post(client, BATCH, {"transfers": legs[:1]})
    assert (status, error_of(refused)) == (409, ("insufficient_funds", "transfers[0].amount"))


async def test_a_repeated_batch_with_its_key_is_replayed(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    body = {
        "transfers": [{"to_user_id": bob.id, "amount": 10}, {"to_username": "bob", "amount": 5}]
    }
    first = await client.post(
        BATCH, json=body, cookies=alice.cookies, headers={"Idempotency-Key": "b1"}
    )
    again = await client.post(
        BATCH, json=body, cookies=alice.cookies, headers={"Idempotency-Key": "b1"}
    )
    assert (first.status, again.status) == (201, 201)
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await bob.balance(client) == 15
    other = dict(body, transfers=body["transfers"][:1])
    reused = await client.post(
        BATCH, json=other, cookies=alice.cookies, headers={"Idempotency-Key": "b1"}
    )
    assert (reused.status, error_of(await reused.json())) == (422, ("idempotency_key_reused", None))


async def test_thirty_concurrent_batches_on_one_balance(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    legs = [{"to_user_id": bob.id, "amount": 40}, {"to_user_id": carol.id, "amount": 30}]
    results = await asyncio.gather(
        *(alice.post(client, BATCH, {"transfers": legs}) for _ in range(30))
    )
    assert sorted(status for status, _ in results) == [201] * 14 + [409] * 16
    assert await alice.balance(client) == 20
    assert (await bob.balance(client), await carol.balance(client)) == (560, 420)


async def test_the_recipient_refunds_part_then_the_rest(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    sent = await transfer(alice, client, bob, 300)
    path = f"/api/balance/transfer/{sent['id']}/refund/"
    status, part = await bob.post(client, path, {"amount": 100})
    assert status == 201, part
    assert (part["kind"], part["refund_of"], part["amount"]) == ("refund", sent["id"], 100)
    assert (part["from_user_id"], part["to_user_id"]) == (bob.id, alice.id)
    status, rest = await bob.post(client, path, {})
    assert (status, rest["amount"]) == (201, 200)
    status, refused = await bob.post(client, path, {})
    assert (status, error_of(refused)) == (422, ("refund_exceeds_transfer", None))
    assert (await alice.balance(client), await bob.balance(client)) == (1_000, 0)
    # In the transfer history of both parties.
    for user, direction in ((alice, "in"), (bob, "out")):
        status, page = await user.get(client, "/api/balance/transfer/", direction=direction)
        refunds = [i for i in page["items"] if i["kind"] == "refund"]
        assert [(i["id"], i["refund_of"]) for i in refunds] == [
            (rest["id"], sent["id"]),
            (part["id"], sent["id"]),
        ]


async def test_a_refund_may_not_exceed_what_is_left(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob", deposit_kopecks=1_000)
    sent = await transfer(alice, client, bob, 300)
    path = f"/api/balance/transfer/{sent['id']}/refund/"
    assert (await bob.post(client, path, {"amount": 250}))[0] == 201
    before = await snapshot_of_data(redis_client)
    status, refused = await bob.post(client, path, {"amount": 51})
    assert (status, error_of(refused)) == (422, ("refund_exceeds_transfer", None))
    assert await snapshot_of_data(redis_client) == before
    assert (await bob.post(client, path, {"amount": 50}))[0] == 201


async def test_only_a_transfer_received_is_refundable(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    sent = await transfer(alice, client, bob, 300)
    status, deposit_page = await alice.get(client, "/api/balance/deposit/")
    deposit_id = deposit_page["items"][0]["id"]
    status, refund = await bob.post(
        client, f"/api/balance/transfer/{sent['id']}/refund/", {"amount": 1}
    )
    assert status == 201
    for who, txn_id in (
        (alice, sent["id"]),  # the payer
        (carol, sent["id"]),  # a stranger
        (alice, deposit_id),  # a deposit
        (alice, refund["id"]),  # a refund, even to its recipient
        (bob, 999_999),
        (bob, "abc"),
        (bob, 0),
    ):
        status, refused = await who.post(client, f"/api/balance/transfer/{txn_id}/refund/", {})
        assert (status, error_of(refused)) == (404, ("transaction_not_found", None)), txn_id


async def test_a_refund_needs_the_money(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    sent = await transfer(alice, client, bob, 300)
    await transfer(bob, client, carol, 250)
    status, refused = await bob.post(client, f"/api/balance/transfer/{sent['id']}/refund/", {})
    assert (status, error_of(refused)) == (409, ("insufficient_funds", None))
    status, _refund = await bob.post(
        client, f"/api/balance/transfer/{sent['id']}/refund/", {"amount": 50}
    )
    assert status == 201


async def test_a_capture_can_be_refunded(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    status, created = await alice.post(client, "/api/holds/", {"to_user_id": bob.id, "amount": 400})
    status, captured = await bob.post(client, f"/api/holds/{created['id']}/capture/", {})
    assert status == 201
    status, refund = await bob.post(client, f"/api/balance/transfer/{captured['id']}/refund/", {})
    assert (status, refund["amount"]) == (201, 400)
    assert await alice.balance(client) == 1_000


async def test_thirty_concurrent_refunds_never_exceed_the_transfer(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob", deposit_kopecks=10_000)
    sent = await transfer(alice, client, bob, 100)
    path = f"/api/balance/transfer/{sent['id']}/refund/"
    results = await asyncio.gather(*(bob.post(client, path, {"amount": 7}) for _ in range(30)))
    assert sorted(status for status, _ in results) == [201] * 14 + [422] * 16
    assert await alice.balance(client) == 900 + 98
    status, rest = await bob.post(client, path, {})
    assert (status, rest["amount"]) == (201, 2)


async def test_a_repeated_refund_with_its_key_is_replayed(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    sent = await transfer(alice, client, bob, 300)
    path = f"/api/balance/transfer/{sent['id']}/refund/"
    headers = {"Idempotency-Key": "r1"}
    first = await client.post(path, json={}, cookies=bob.cookies, headers=headers)
    again = await client.post(path, json={}, cookies=bob.cookies, headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await alice.balance(client) == 1_000
