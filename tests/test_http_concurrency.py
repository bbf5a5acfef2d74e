"""The contract's concurrency cases, through HTTP."""

import asyncio

from tests.support.http_helpers import Client, new_user


async def test_deposit_and_incoming_transfer_at_the_same_moment_both_count(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=10_000)
    bob = await new_user(client, "bob")
    for _ in range(20):
        results = await asyncio.gather(
            alice.post(client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 500}),
            bob.post(client, "/api/balance/deposit/", {"amount": 100}),
        )
        assert [status for status, _ in results] == [201, 201]
    assert await bob.balance(client) == 20 * (500 + 100)
    assert await alice.balance(client) == 0


async def test_sixty_concurrent_transfers_of_ten_from_a_hundred(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=100)
    bob = await new_user(client, "bob")
    results = await asyncio.gather(
        *(
            alice.post(client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 10})
            for _ in range(60)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] * 10 + [409] * 50
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "insufficient_funds"
    }
    assert (await alice.balance(client), await bob.balance(client)) == (0, 100)


async def test_thirty_concurrent_retries_with_one_key_move_money_once(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    results = await asyncio.gather(
        *(
            alice.post(
                client,
                "/api/balance/transfer/",
                {"to_user_id": bob.id, "amount": 250},
                **{"Idempotency-Key": "retry-storm"},
            )
            for _ in range(30)
        )
    )
    assert {status for status, _ in results} == {201}
    assert len({body["id"] for _, body in results}) == 1
    assert all(body == results[0][1] for _, body in results)
    assert (await alice.balance(client), await bob.balance(client)) == (750, 250)
