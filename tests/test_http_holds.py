"""Holds through HTTP: every row of the contract's "Holds", who may act, expiry, listing,
idempotency and concurrency."""

import asyncio
from typing import Any

import pytest

from service.domain.times import parse_rfc3339
from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.helpers import snapshot_of_data
from tests.support.http_helpers import Client, LoggedIn, error_of, new_user


async def hold(
    payer: LoggedIn, client: Client, payee: LoggedIn, amount: int, **extra: Any
) -> dict[str, Any]:
    status, body = await payer.post(
        client, "/api/holds/", {"to_user_id": payee.id, "amount": amount, **extra}
    )
    assert status == 201, body
    return dict(body)


async def expire_now(redis: RedisClient, hold: dict[str, Any]) -> None:
    """Moves a hold's expiry to Redis's present instant, as if its time had come: the
    scripts and readers must treat it as expired from that instant on, swept or not."""
    seconds, micros = await redis.time()
    now_us = seconds * 1_000_000 + micros
    hold_id, payer, payee, amount = (
        hold[f] for f in ("id", "from_user_id", "to_user_id", "amount")
    )
    bucket = keyspace.bucket_of(payer)  # a hold lives in its payer's bucket
    await redis.hset(keyspace.hold(bucket, hold_id), "expires_at_us", str(now_us))
    member = f"{hold_id}:{payee}:{amount}"
    assert await redis.zadd(keyspace.pending_holds(payer), {member: now_us}, xx=True, ch=True)
    due_member = f"{hold_id}:{payer}:{payee}:{amount}"
    assert await redis.zadd(keyspace.holds_due(bucket), {due_member: now_us}, xx=True, ch=True)


async def test_a_hold_reserves_then_its_payee_captures_part(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 300, expires_in_s=3_600)
    assert created["status"] == "pending"
    assert (created["amount"], created["amount_rub"], created["captured_amount"]) == (
        300,
        "3.00",
        0,
    )
    assert (created["from_user_id"], created["to_user_id"]) == (alice.id, bob.id)
    assert created["capture_transaction_id"] is None
    assert created["created_at"] < created["expires_at"]
    assert await alice.amounts(client) == (1_000, 300, 700)
    assert await bob.amounts(client) == (0, 0, 0)

    for reader in (alice, bob):
        status, seen = await reader.get(client, f"/api/holds/{created['id']}/")
        assert (status, seen) == (200, created)

    status, captured = await bob.post(
        client, f"/api/holds/{created['id']}/capture/", {"amount": 200}
    )
    assert status == 201, captured
    assert captured["kind"] == "transfer"
    assert captured["hold_id"] == created["id"]
    assert (captured["from_user_id"], captured["to_user_id"], captured["amount"]) == (
        alice.id,
        bob.id,
        200,
    )
    # The 100 not captured is the payer's again.
    assert await alice.amounts(client) == (800, 0, 800)
    assert await bob.amounts(client) == (200, 0, 200)
    status, seen = await alice.get(client, f"/api/holds/{created['id']}/")
    assert seen["status"] == "captured"
    assert (seen["captured_amount"], seen["capture_transaction_id"]) == (200, captured["id"])

    # A hold is captured at most once, and then cannot be voided.
    status, again = await bob.post(client, f"/api/holds/{created['id']}/capture/", {})
    assert (status, error_of(again)) == (409, ("hold_not_pending", None))
    status, again = await bob.post(client, f"/api/holds/{created['id']}/void/", None)
    assert (status, error_of(again)) == (409, ("hold_not_pending", None))

    # The capture is a transfer in both histories, with the viewer's balance after it.
    status, out = await alice.get(client, "/api/balance/transfer/", direction="out")
    assert out["items"][0]["hold_id"] == created["id"]
    assert out["items"][0]["balance_after_kopecks"] == 800


async def test_a_capture_with_no_amount_takes_the_whole_hold(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 400)
    response = await client.post(
        f"/api/holds/{created['id']}/capture/", cookies=bob.cookies
    )  # no body at all
    assert response.status == 201
    assert (await response.json())["amount"] == 400
    assert await alice.amounts(client) == (600, 0, 600)
    assert await bob.balance(client) == 400


async def test_the_payee_voids_and_the_money_is_the_payers_again(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 1_000)
    assert await alice.amounts(client) == (1_000, 1_000, 0)
    status, voided = await bob.post(client, f"/api/holds/{created['id']}/void/", None)
    assert status == 200, voided
    assert voided == dict(created, status="voided")
    assert await alice.amounts(client) == (1_000, 0, 1_000)
    status, again = await bob.post(client, f"/api/holds/{created['id']}/capture/", {})
    assert (status, error_of(again)) == (409, ("hold_not_pending", None))


async def test_only_the_payee_acts_and_only_the_parties_read(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol", deposit_kopecks=5)
    created = await hold(alice, client, bob, 300)
    before = await snapshot_of_data(redis_client)
    for actor in (alice, carol):
        for action, body in (("capture", {}), ("void", None)):
            status, refused = await actor.post(
                client, f"/api/holds/{created['id']}/{action}/", body
            )
            assert (status, error_of(refused)) == (404, ("hold_not_found", None)), actor
    status, refused = await carol.get(client, f"/api/holds/{created['id']}/")
    assert (status, error_of(refused)) == (404, ("hold_not_found", None))
    assert await snapshot_of_data(redis_client) == before
    assert await alice.amounts(client) == (1_000, 300, 700)


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"to_user_id": "BOB", "amount": 701}, 409, "insufficient_funds", None),
        ({"to_user_id": 999_999, "amount": 1}, 404, "recipient_not_found", None),
        ({"to_username": "nobody", "amount": 1}, 404, "recipient_not_found", None),
        ({"to_user_id": "ALICE", "amount": 1}, 422, "self_transfer", "to_user_id"),
        ({"to_user_id": "BOB", "amount": 0}, 422, "validation_error", "amount"),
        ({"to_user_id": "BOB", "amount": 10**12 + 1}, 422, "validation_error", "amount"),
        ({"to_user_id": "BOB", "amount": 1, "expires_in_s": 59}, 422, "validation_error",
         "expires_in_s"),
        ({"to_user_id": "BOB", "amount": 1, "expires_in_s": 604_801}, 422, "validation_error",
         "expires_in_s"),
        ({"to_user_id": "BOB", "amount": 1, "expires_in_s": 60.0}, 422, "validation_error",
         "expires_in_s"),
        ({"to_user_id": "BOB", "to_username": "bob", "amount": 1}, 422, "validation_error", None),
        ({"to_user_id": "BOB", "amount": 1, "from_user_id": "BOB"}, 422, "validation_error",
         "from_user_id"),
    ],
)  # fmt: skip
async def test_hold_refusals_change_nothing(
    client: Client,
    redis_client: RedisClient,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    await hold(alice, client, bob, 300)  # 700 available
    ids = {"ALICE": alice.id, "BOB": bob.id}
    body = {k: ids.get(v, v) if isinstance(v, str) and k != "to_username" else v
            for k, v in body.items()}  # fmt: skip
    before = await snapshot_of_data(redis_client)
    got_status, got = await alice.post(client, "/api/holds/", body)
    assert (got_status, error_of(got)) == (status, (code, field))
    assert await snapshot_of_data(redis_client) == before


async def test_expiry_limits_at_the_edges_are_accepted(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=10**12)
    assert (await alice.post(client, "/api/balance/deposit/", {"amount": 2}))[0] == 201
    bob = await new_user(client, "bob")
    shortest = await hold(alice, client, bob, 1, expires_in_s=60)
    longest = await hold(alice, client, bob, 10**12 - 1, expires_in_s=604_800)
    default = await hold(alice, client, bob, 1)
    for created, seconds in ((shortest, 60), (longest, 604_800), (default, 86_400)):
        span = parse_rfc3339(created["expires_at"]) - parse_rfc3339(created["created_at"])
        assert span.total_seconds() == seconds


async def test_capture_refusals(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 300)
    path = f"/api/holds/{created['id']}/capture/"
    for body, expected in (
        ({"amount": 301}, (422, ("validation_error", "amount"))),
        ({"amount": 0}, (422, ("validation_error", "amount"))),
        ({"amount": "1"}, (422, ("validation_error", "amount"))),
        ({"amount": 1, "to_user_id": 1}, (422, ("validation_error", "to_user_id"))),
    ):
        status, refused = await bob.post(client, path, body)
        assert (status, error_of(refused)) == expected, body
    for missing in ("999999", "0", "abc", "1" * 16):
        status, refused = await bob.post(client, f"/api/holds/{missing}/capture/", {})
        assert (status, error_of(refused)) == (404, ("hold_not_found", None)), missing
    assert await alice.amounts(client) == (1_000, 300, 700)


async def test_held_money_cannot_be_spent_twice(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    await hold(alice, client, bob, 800)
    status, refused = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 201}
    )
    assert (status, error_of(refused)) == (409, ("insufficient_funds", None))
    status, _ = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 200}
    )
    assert status == 201
    assert await alice.amounts(client) == (800, 800, 0)


async def test_an_expired_hold_cannot_be_captured_and_its_money_is_available(
    client: Client, redis_client: RedisClient
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 600)
    await expire_now(redis_client, created)
    # No sweep has run: the scripts and the reads see the expiry all the same.
    assert await alice.amounts(client) == (1_000, 0, 1_000)
    status, refused = await bob.post(client, f"/api/holds/{created['id']}/capture/", {})
    assert (status, error_of(refused)) == (409, ("hold_not_pending", None))
    status, refused = await bob.post(client, f"/api/holds/{created['id']}/void/", None)
    assert (status, error_of(refused)) == (409, ("hold_not_pending", None))
    status, seen = await alice.get(client, f"/api/holds/{created['id']}/")
    assert seen["status"] == "expired"
    status, _ = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 1_000}
    )
    assert status == 201
    assert await alice.amounts(client) == (0, 0, 0)


async def test_listing_by_role_and_status_newest_first(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=10_000)
    bob = await new_user(client, "bob", deposit_kopecks=10_000)
    made = [await hold(alice, client, bob, n) for n in range(1, 6)]
    made.append(await hold(bob, client, alice, 77))
    await bob.post(client, f"/api/holds/{made[0]['id']}/capture/", {})
    await bob.post(client, f"/api/holds/{made[1]['id']}/void/", None)

    async def ids(user: LoggedIn, **query: str) -> list[int]:
        status, page = await user.get(client, "/api/holds/", **query)
        assert status == 200, page
        return [item["id"] for item in page["items"]]

    newest_first = [h["id"] for h in reversed(made)]
    assert await ids(alice) == newest_first
    assert await ids(alice, role="payer") == newest_first[1:]
    assert await ids(alice, role="payee") == [made[5]["id"]]
    assert await ids(bob, role="payee") == newest_first[1:]
    assert await ids(alice, status="captured") == [made[0]["id"]]
    assert await ids(alice, status="voided") == [made[1]["id"]]
    assert await ids(alice, status="expired") == []
    assert await ids(alice, status="pending", role="payer") == [
        made[4]["id"],
        made[3]["id"],
        made[2]["id"],
    ]

    # Pages of 2, following next_cursor, cover everything once.
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page = await alice.get(client, "/api/holds/", **query)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first

    # Made last by a user of another bucket (with three buckets, ids of another epoch, lower
    # than alice's): still first, lists being newest first by instant, not by id.
    carol = await new_user(client, "carol", deposit_kopecks=100)
    last = await hold(carol, client, bob, 9)
    assert await ids(bob, role="payee") == [last["id"], *newest_first[1:]]
    status, page = await bob.get(client, "/api/holds/", role="payee", limit="1")
    status, page = await bob.get(client, "/api/holds/", role="payee", cursor=page["next_cursor"])
    assert [item["id"] for item in page["items"]] == newest_first[1:]

    for query in ({"status": "open"}, {"role": "both"}, {"limit": "0"}, {"cursor": "x"},
                  {"colour": "red"}):  # fmt: skip
        status, refused = await alice.get(client, "/api/holds/", **query)
        assert (status, refused["error"]["code"]) == (422, "validation_error"), query


async def test_a_repeated_capture_with_its_key_is_replayed(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 300)
    path = f"/api/holds/{created['id']}/capture/"
    first = await client.post(
        path, json={"amount": 100}, cookies=bob.cookies, headers={"Idempotency-Key": "cap-1"}
    )
    again = await client.post(
        path, json={"amount": 100}, cookies=bob.cookies, headers={"Idempotency-Key": "cap-1"}
    )
    assert (first.status, again.status) == (201, 201)
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await client.post(
        path, json={"amount": 50}, cookies=bob.cookies, headers={"Idempotency-Key": "cap-1"}
    )
    assert (other.status, error_of(await other.json())) == (
        422,
        ("idempotency_key_reused", None),
    )
    assert await bob.balance(client) == 100


async def test_thirty_concurrent_holds_on_one_balance(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    results = await asyncio.gather(
        *(
            alice.post(client, "/api/holds/", {"to_user_id": bob.id, "amount": 70})
            for _ in range(30)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] * 14 + [409] * 16
    assert await alice.amounts(client) == (1_000, 980, 20)
    # Captures of them all, concurrently: each once, nothing overdraws.
    ids = [body["id"] for status, body in results if status == 201]
    captures = await asyncio.gather(
        *(bob.post(client, f"/api/holds/{i}/capture/", {}) for i in ids for _ in range(2))
    )
    assert sorted(status for status, _ in captures) == [201] * 14 + [409] * 14
    assert await alice.amounts(client) == (20, 0, 20)
    assert await bob.balance(client) == 980


async def test_read_your_writes_with_the_writer_stopped(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    created = await hold(alice, client, bob, 300)
    status, page = await bob.get(client, "/api/holds/", role="payee")
    assert [item["id"] for item in page["items"]] == [created["id"]]
    status, _voided = await bob.post(client, f"/api/holds/{created['id']}/void/", None)
    assert status == 200
    status, page = await alice.get(client, "/api/holds/", status="voided")
    assert [item["id"] for item in page["items"]] == [created["id"]]
