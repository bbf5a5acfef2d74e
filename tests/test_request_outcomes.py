"""A money request whose reply from Redis is lost is answered with what it did: its
transaction, or "not applied" (and then it never will be), or 503 outcome_unknown when
Redis cannot tell in time; never "refused" or "retry later" when it may have been applied.

The lost reply is made here by wrapping a money script: it runs (or not), then the call
fails as a timeout after sending would. tests/faults/test_lost_replies.py makes the same
happen to real processes, with Redis paused and killed.
"""

import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.domain import refusals
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.pipelining import ReplyLost
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import balance, refusing, snapshot, stream_fields
from tests.support.http_helpers import Client, new_user
from tests.support.lost_replies import LosesTheReply, through_a_proxy


@pytest.fixture
async def users(money: MoneyScripts) -> tuple[int, int]:
    await money.register_user(1)
    await money.register_user(2)
    await money.deposit(1, 1_000)
    return 1, 2


def losing(money: MoneyScripts, script: str, runs: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    attribute = f"_{script}"
    wrapper = LosesTheReply(getattr(money, attribute), runs)
    monkeypatch.setattr(money, attribute, wrapper)
    return wrapper


async def test_a_request_that_ran_is_answered_with_its_transaction(
    money: MoneyScripts,
    redis_client: RedisClient,
    users: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    losing(money, "transfer", True, monkeypatch)
    accepted = await money.transfer(1, 2, 300)
    losing(money, "deposit", True, monkeypatch)
    deposited = await money.deposit(2, 5)
    stream = await stream_fields(redis_client)
    assert [(r["id"], r["kind"], r["amount"]) for r in stream[-2:]] == [
        (str(accepted.txn_id), "transfer", "300"),
        (str(deposited.txn_id), "deposit", "5"),
    ]
    assert not accepted.replayed
    assert (await balance(redis_client, 1), await balance(redis_client, 2)) == (700, 305)


async def test_a_request_that_did_not_run_is_not_applied_and_never_will_be(
    money: MoneyScripts,
    redis_client: RedisClient,
    users: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost = losing(money, "transfer", False, monkeypatch)
    with refusing(refusals.REQUEST_NOT_APPLIED) as refused:
        await money.transfer(1, 2, 300, "k")
    assert refused.value.retry_after_s == 1  # safe to send again: nothing was done
    before = await snapshot(redis_client)
    # The command reaches Redis after the lookup: it does nothing.
    assert (await lost.arrives_late())[0] == b"not_applied"
    assert await snapshot(redis_client) == before
    assert not await redis_client.exists(keyspace.idempotency(1, "k"))
    assert (await balance(redis_client, 1), await balance(redis_client, 2)) == (1_000, 0)
    assert len(await stream_fields(redis_client)) == 1  # the opening deposit


async def test_a_refusal_whose_reply_was_lost_is_answered_not_applied(
    money: MoneyScripts,
    redis_client: RedisClient,
    users: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused request changed nothing and records nothing under its token: the lookup
    says "not applied", which is true; a retry with the key gets the recorded refusal."""
    losing(money, "transfer", True, monkeypatch)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await money.transfer(1, 2, 5_000, "k")
    monkeypatch.undo()
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await money.transfer(1, 2, 5_000, "k")
    assert replay.value.replayed


async def test_a_moved_request_leaves_a_record_that_expires(
    money: MoneyScripts,
    redis_client: RedisClient,
    users: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = losing(money, "deposit", True, monkeypatch)
    accepted = await money.deposit(1, 1)
    keys, _ = sent.sent[-1]
    record = await redis_client.hgetall(keys[3])
    assert record == {
        b"outcome": b"ok",
        b"txn_id": str(accepted.txn_id).encode(),
        b"created_at_us": str(accepted.created_at_us).encode(),
    }
    assert 0 < await redis_client.ttl(keys[3]) <= Settings().request_outcome_ttl_s


async def test_the_outcome_is_unknown_when_redis_does_not_tell_in_time(
    redis_client: RedisClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    money = MoneyScripts(redis_client, settings.model_copy(update={"request_outcome_wait_ms": 300}))
    await money.register_user(1)
    losing(money, "deposit", True, monkeypatch)
    asked = 0

    async def redis_down(user_id: int, token: str) -> Any:
        nonlocal asked
        asked += 1
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(money._runner, "_lookup_request", redis_down)
    started = time.monotonic()
    with refusing(refusals.OUTCOME_UNKNOWN) as unknown:
        await money.deposit(1, 5)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert asked > 1  # asked again and again within the wait
    assert unknown.value.retry_after_s is None  # it may have been applied: no "retry later"


async def test_nothing_is_known_of_a_request_while_redis_has_lost_its_data(
    redis_client: RedisClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis that lost its data lost the records too: "not applied" would be a guess."""
    money = MoneyScripts(redis_client, settings.model_copy(update={"request_outcome_wait_ms": 300}))
    await money.register_user(1)
    lost = losing(money, "deposit", False, monkeypatch)
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    with refusing(refusals.OUTCOME_UNKNOWN):
        await money.deposit(1, 5)
    keys, _ = lost.sent[-1]
    assert not await redis_client.exists(keys[3])


async def test_a_reply_lost_on_the_wire_is_found_again(
    redis_url: str, settings: Settings, redis_client: RedisClient
) -> None:
    """End to end: the script runs in Redis, its reply is dropped, the call times out after
    sending (ReplyLost), and the lookup finds the transaction."""
    async with through_a_proxy(settings, redis_url) as (proxy, through):
        client = connect_redis(through)
        try:
            money = MoneyScripts(client, through)
            await money.register_user(1)
            proxy.drop_next = True
            with pytest.raises(ReplyLost):
                await LuaScript(client, "register_user")(keys=[keyspace.user(2)], args=["2"])
            assert await redis_client.exists(keyspace.user(2))  # it ran all the same

            proxy.drop_next = True
            accepted = await money.deposit(1, 500)
            assert not proxy.drop_next  # the deposit's reply was the one dropped
            [record] = await stream_fields(redis_client)
            assert (record["id"], record["amount"]) == (str(accepted.txn_id), "500")
            assert await balance(redis_client, 1) == 500
        finally:
            await client.aclose()


@pytest.mark.in_process_only
async def test_over_http_an_unknown_outcome_is_503_without_retry_after(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.http.state import MONEY

    app = client.app
    assert app is not None
    alice = await new_user(client, "alice", deposit_kopecks=100)
    money = app[MONEY]
    monkeypatch.setattr(money._runner, "_outcome_wait_s", 0.2)
    losing(money, "deposit", True, monkeypatch)

    async def redis_down(user_id: int, token: str) -> Any:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(money._runner, "_lookup_request", redis_down)
    response = await client.post("/api/balance/deposit/", json={"amount": 5}, cookies=alice.cookies)
    assert response.status == 503
    body = await response.json()
    assert body["error"]["code"] == "outcome_unknown"
    assert "Idempotency-Key" in body["error"]["message"]
    assert "Retry-After" not in response.headers

    monkeypatch.undo()
    losing(money, "deposit", True, monkeypatch)
    response = await client.post("/api/balance/deposit/", json={"amount": 7}, cookies=alice.cookies)
    assert response.status == 201  # the lookup found the transaction
    assert (await response.json())["amount"] == 7
    assert await alice.balance(client) == 112
