"""Deposit and transfer histories: newest first, keyset pages, read-your-writes."""

import base64

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.redis import keyspace
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.helpers import persist
from tests.support.http_helpers import Client, LoggedIn, new_user


async def all_pages(user: LoggedIn, client: Client, path: str, **query: str) -> list[dict]:  # type: ignore[type-arg]
    items: list[dict] = []  # type: ignore[type-arg]
    cursor: str | None = None
    while True:
        params = dict(query, **({"cursor": cursor} if cursor else {}))
        status, body = await user.get(client, path, **params)
        assert status == 200, body
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_read_your_writes_with_the_writer_stopped(client: Client) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob")
    status, sent = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 300}
    )
    assert status == 201
    # Nothing has been persisted: no writer runs in this test.
    status, out = await alice.get(client, "/api/balance/transfer/")
    assert status == 200
    # Every item carries the viewer's balance right after it.
    mine = dict(sent, direction="out", balance_after_kopecks=700, balance_after="7.00")
    assert out == {"items": [mine], "next_cursor": None}
    status, incoming = await bob.get(client, "/api/balance/transfer/", direction="in")
    theirs = dict(sent, direction="in", balance_after_kopecks=300, balance_after="3.00")
    [item] = incoming["items"]
    if keyspace.same_bucket(alice.id, bob.id):
        assert item == theirs
    else:
        # Across buckets the payee's side is stamped as its balance moved, by its bucket's
        # clock: not before the payer's (docs/scaling.md, "In the ledger").
        assert item["created_at"] >= sent["created_at"]
        assert dict(item, created_at=sent["created_at"]) == theirs
    assert (await bob.get(client, "/api/balance/transfer/", direction="out"))[1]["items"] == []
    deposits = (await alice.get(client, "/api/balance/deposit/"))[1]["items"]
    assert [(d["kind"], d["amount"], d["amount_rub"]) for d in deposits] == [
        ("deposit", 1_000, "10.00")
    ]


async def test_history_merges_persisted_and_unpersisted_without_repeats(
    client: Client, settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    alice = await new_user(client, "alice", deposit_kopecks=100_000)
    bob = await new_user(client, "bob", deposit_kopecks=100_000)
    for bucket in keyspace.all_buckets():
        await ensure_consumer_group(redis_client, bucket)
    sent_ids = []
    for n in range(1, 31):
        sender, recipient = (alice, bob) if n % 3 else (bob, alice)
        status, body = await sender.post(
            client, "/api/balance/transfer/", {"to_user_id": recipient.id, "amount": n}
        )
        assert status == 201
        sent_ids.append(body["id"])
        if n in (10, 20):
            await persist(redis_client, db_engine, max_batches=1)
    for user in (alice, bob):
        items = await all_pages(user, client, "/api/balance/transfer/", limit="4")
        # Newest first: in the order sent (ids follow it only within one bucket).
        assert [i["id"] for i in items] == sent_ids[::-1]
        for item in items:
            assert item["direction"] == ("out" if item["from_user_id"] == user.id else "in")
        outgoing = await all_pages(
            user, client, "/api/balance/transfer/", direction="out", limit="100"
        )
        incoming = await all_pages(user, client, "/api/balance/transfer/", direction="in")
        assert {i["id"] for i in outgoing} | {i["id"] for i in incoming} == set(sent_ids)
        assert not {i["id"] for i in outgoing} & {i["id"] for i in incoming}
        assert all(i["from_user_id"] == user.id for i in outgoing)
        assert all(i["to_user_id"] == user.id for i in incoming)


async def test_pagination_over_hundreds_of_transactions(
    client: Client, settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    alice = await new_user(client, "alice")
    ids = []
    for n in range(1, 251):
        status, body = await alice.post(client, "/api/balance/deposit/", {"amount": n})
        assert status == 201
        ids.append(body["id"])
        if n == 200:
            await persist(redis_client, db_engine)
    for limit in ("1", "7", "50", "100"):
        items = await all_pages(alice, client, "/api/balance/deposit/", limit=limit)
        assert [i["id"] for i in items] == ids[::-1]
    status, first = await alice.get(client, "/api/balance/deposit/")
    assert len(first["items"]) == 50
    assert (
        sum(i["amount"] for i in await all_pages(alice, client, "/api/balance/deposit/"))
        == 250 * 251 // 2
    )
    assert await alice.balance(client) == 250 * 251 // 2


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/balance/deposit/", {"limit": "0"}, "limit"),
        ("/api/balance/deposit/", {"limit": "101"}, "limit"),
        ("/api/balance/deposit/", {"limit": "abc"}, "limit"),
        ("/api/balance/deposit/", {"limit": "5.0"}, "limit"),
        ("/api/balance/deposit/", {"limit": "-1"}, "limit"),
        ("/api/balance/deposit/", {"limit": ""}, "limit"),
        ("/api/balance/deposit/", {"limit": "\u00b2"}, "limit"),  # superscript two
        ("/api/balance/deposit/", {"limit": "\uff11"}, "limit"),  # fullwidth one
        ("/api/balance/deposit/", {"cursor": "garbage!"}, "cursor"),
        ("/api/balance/deposit/", {"cursor": _cursor("v2:5")}, "cursor"),
        ("/api/balance/deposit/", {"cursor": _cursor("v1:-5")}, "cursor"),
        ("/api/balance/deposit/", {"direction": "in"}, "direction"),
        ("/api/balance/transfer/", {"direction": "up"}, "direction"),
        ("/api/balance/transfer/", {"page": "2"}, "page"),
    ],
)
async def test_bad_history_queries(
    client: Client, path: str, query: dict[str, str], field: str
) -> None:
    alice = await new_user(client, "alice")
    status, body = await alice.get(client, path, **query)
    assert status == 422
    assert (body["error"]["code"], body["error"]["field"]) == ("validation_error", field)


async def test_history_is_unavailable_rather_than_wrong_when_the_writer_is_far_behind(
    aiohttp_client: object,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
) -> None:
    from service.http.app import create_app

    app = create_app(app_settings.model_copy(update={"history_tail_max_entries": 100}))
    client: Client = await aiohttp_client(app)  # type: ignore[operator]
    alice = await new_user(client, "alice")
    for _ in range(101):
        await alice.post(client, "/api/balance/deposit/", {"amount": 1})
    # Every read that merges the ledger with the unpersisted tail says so alike.
    for path, query in (
        ("/api/balance/deposit/", {}),
        ("/api/balance/transfer/", {}),
        ("/api/balance/", {"at": "2999-01-01T00:00:00Z"}),
        ("/api/balance/statement/", {"from": "2000-01-01T00:00:00Z", "to": "2000-12-31T00:00:00Z"}),
        ("/api/holds/", {}),
    ):
        status, body = await alice.get(client, path, **query)
        assert (status, body["error"]["code"]) == (503, "history_unavailable"), path
    await persist(redis_client, db_engine)
    status, body = await alice.get(client, "/api/balance/deposit/", limit="100")
    assert status == 200
    assert len(body["items"]) == 100
