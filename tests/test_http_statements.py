"""Past balances and statements through HTTP: read-your-writes, exact boundaries, the
running balance, CSV, and every refusal."""

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.limits import MAX_STATEMENT_ITEMS
from service.domain.times import parse_rfc3339, rfc3339
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from tests.support.helpers import persist
from tests.support.http_helpers import Client, LoggedIn, error_of, new_user


def shifted(instant: str, microseconds: int) -> str:
    return rfc3339(parse_rfc3339(instant) + timedelta(microseconds=microseconds))


async def activity(client: Client) -> tuple[LoggedIn, LoggedIn, list[dict[str, Any]]]:
    """Alice's deposits, transfers both ways, a capture and a refund; her transactions in
    the order they happened."""
    alice = await new_user(client, "alice", deposit_kopecks=1_000)
    bob = await new_user(client, "bob", deposit_kopecks=500)
    done = [(await alice.get(client, "/api/balance/deposit/"))[1]["items"][0]]
    for user, path, body in (
        (alice, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 300}),
        (bob, "/api/balance/transfer/", {"to_user_id": alice.id, "amount": 120}),
        (alice, "/api/balance/deposit/", {"amount": 5}),
    ):
        status, txn = await user.post(client, path, body)
        assert status == 201, txn
        done.append(txn)
    status, created = await alice.post(client, "/api/holds/", {"to_user_id": bob.id, "amount": 70})
    status, captured = await bob.post(client, f"/api/holds/{created['id']}/capture/", {})
    assert status == 201
    done.append(captured)
    status, refund = await bob.post(
        client, f"/api/balance/transfer/{done[1]['id']}/refund/", {"amount": 30}
    )
    assert status == 201
    done.append(refund)
    # Each as alice's statement lists it: a transfer toward her from another bucket at the
    # instant her balance moved, by her bucket's clock (docs/scaling.md, "In the ledger").
    status, page = await alice.get(client, "/api/balance/transfer/", limit="100")
    hers = {item["id"]: item["created_at"] for item in page["items"]}
    if keyspace.same_bucket(alice.id, bob.id):  # one instant per transaction
        assert all(hers[t["id"]] == t["created_at"] for t in done if t["id"] in hers)
    return alice, bob, [dict(t, created_at=hers.get(t["id"], t["created_at"])) for t in done]


async def statement(user: LoggedIn, client: Client, start: str, end: str) -> dict[str, Any]:
    status, body = await user.get(client, "/api/balance/statement/", **{"from": start, "to": end})
    assert status == 200, body
    return dict(body)


def check_running_balance(body: dict[str, Any]) -> None:
    balance = body["opening_balance_kopecks"]
    for item in body["items"]:
        balance += item["amount"] if item["direction"] == "in" else -item["amount"]
        assert item["balance_after_kopecks"] == balance, item
    assert balance == body["closing_balance_kopecks"]


@pytest.mark.parametrize("persisted", [False, True])
async def test_a_statement_adds_up_from_opening_to_closing(
    client: Client, redis_client: RedisClient, db_engine: AsyncEngine, persisted: bool
) -> None:
    for bucket in keyspace.all_buckets():
        await ensure_consumer_group(redis_client, bucket)
    alice, _, done = await activity(client)
    if persisted:  # else everything is still only in the stream: read-your-writes
        await persist(redis_client, db_engine)
    whole = await statement(
        alice, client, shifted(done[0]["created_at"], -1), shifted(done[-1]["created_at"], 1)
    )
    assert [i["id"] for i in whole["items"]] == [t["id"] for t in done]
    assert whole["opening_balance_kopecks"] == 0
    assert (
        whole["closing_balance_kopecks"]
        == await alice.balance(client)
        == 1_000 - 300 + 120 + 5 - 70 + 30
    )
    check_running_balance(whole)
    assert [i["kind"] for i in whole["items"]] == [
        "deposit",
        "transfer",
        "transfer",
        "deposit",
        "transfer",
        "refund",
    ]

    # [from, to): a period that ends at a transaction leaves it out; one that starts there keeps it.
    middle = await statement(alice, client, done[2]["created_at"], done[4]["created_at"])
    assert [i["id"] for i in middle["items"]] == [done[2]["id"], done[3]["id"]]
    assert middle["opening_balance_kopecks"] == 700
    check_running_balance(middle)
    empty = await statement(
        alice, client, shifted(done[-1]["created_at"], 1), shifted(done[-1]["created_at"], 2)
    )
    assert empty["items"] == []
    assert empty["opening_balance_kopecks"] == empty["closing_balance_kopecks"] == 785


async def test_the_balance_at_an_instant(client: Client, redis_client: RedisClient) -> None:
    alice, _, done = await activity(client)

    async def at(instant: str) -> int:
        status, body = await alice.get(client, "/api/balance/", at=instant)
        assert status == 200, body
        assert set(body) == {"user_id", "at", "balance_kopecks", "balance", "currency"}
        return int(body["balance_kopecks"])

    assert await at(shifted(done[0]["created_at"], -1)) == 0
    assert await at(done[0]["created_at"]) == 1_000  # right after the transaction at T
    assert await at(done[1]["created_at"]) == 700
    assert await at(shifted(done[2]["created_at"], -1)) == 700
    assert await at("2999-01-01T00:00:00Z") == await alice.balance(client)
    status, body = await alice.get(client, "/api/balance/", at="1970-01-01T03:00:00+03:00")
    assert (status, body["at"], body["balance_kopecks"]) == (200, "1970-01-01T00:00:00.000000Z", 0)


async def test_a_statement_as_csv(client: Client) -> None:
    alice, _, done = await activity(client)
    response = await client.get(
        "/api/balance/statement/",
        params={"from": "2000-01-01T00:00:00Z", "to": "2000-12-31T00:00:00Z", "format": "csv"},
        cookies=alice.cookies,
    )
    assert response.status == 200
    assert response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert rows == []
    end = shifted(done[-1]["created_at"], 1)
    response = await client.get(
        "/api/balance/statement/",
        params={"from": done[0]["created_at"], "to": end, "format": "csv"},
        cookies=alice.cookies,
    )
    text = await response.text()
    assert text.splitlines()[0].startswith("id,created_at,kind,direction,amount")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(row["id"]) for row in rows] == [t["id"] for t in done]
    assert rows[-1]["refund_of"] == str(done[1]["id"])
    assert rows[-1]["balance_after_kopecks"] == "785"


async def test_statement_refusals(client: Client) -> None:
    alice, _, done = await activity(client)
    for query, field in (
        ({"to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}, "from"),
        ({"from": "yesterday", "to": "2026-01-02T00:00:00Z"}, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T23:59:59.999999Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2027-01-02T00:00:01Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "format": "xml"}, "format"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "page": "1"}, "page"),
    ):
        status, body = await alice.get(client, "/api/balance/statement/", **query)
        assert (status, error_of(body)) == (422, ("validation_error", field)), query
    # 366 days exactly is allowed, and so is an empty period.
    await statement(alice, client, "2026-01-01T00:00:00Z", "2027-01-02T00:00:00Z")
    empty = await statement(alice, client, done[1]["created_at"], done[1]["created_at"])
    assert empty["items"] == []
    assert empty["opening_balance_kopecks"] == empty["closing_balance_kopecks"] == 1_000
    for bad in ("now", "2026-01-01", "2026-01-01T00:00:00"):
        status, body = await alice.get(client, "/api/balance/", at=bad)
        assert (status, error_of(body)) == (422, ("validation_error", "at")), bad


async def test_a_statement_of_more_than_ten_thousand_items_is_refused(
    client: Client, money: MoneyScripts
) -> None:
    alice = await new_user(client, "alice")
    for _ in range(MAX_STATEMENT_ITEMS // 500):
        await asyncio.gather(*(money.deposit(alice.id, 1) for _one in range(500)))
    period = {"from": rfc3339(datetime.now(UTC) - timedelta(days=1)),
              "to": rfc3339(datetime.now(UTC) + timedelta(days=1))}  # fmt: skip
    status, body = await alice.get(client, "/api/balance/statement/", **period)
    assert (status, len(body["items"])) == (200, MAX_STATEMENT_ITEMS)
    check_running_balance(body)
    await money.deposit(alice.id, 1)
    status, body = await alice.get(client, "/api/balance/statement/", **period)
    assert (status, error_of(body)) == (422, ("statement_too_large", "to"))
