"""lua/transfer_batch.lua through service/redis/batches.py, against a real server."""

import asyncio
import hashlib
import time
from collections import Counter

import pytest

from service.domain import refusals
from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import MAX_BATCH_LEGS, TXN_IDS_PER_EPOCH
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.batches import BatchAccepted, BatchScripts, Leg
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts, SessionCheck
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.held_money import HOUR_US, now_us, put_hold
from tests.support.helpers import balance, refusing, snapshot, stream_fields
from tests.support.lost_replies import LosesTheReply

PAYER = 1


@pytest.fixture
def batches(redis_client: RedisClient, settings: Settings) -> BatchScripts:
    return BatchScripts(redis_client, settings)


@pytest.fixture
async def users(money: MoneyScripts) -> None:
    for user_id in (1, 2, 3, 4):
        await money.register_user(user_id)


def transfer_record(
    txn_id: int,
    to: int,
    amount: int,
    at: int,
    from_balance: int,
    to_balance: int,
    key: str = "",
    fingerprint: str | None = None,
) -> dict[str, str]:
    record = {
        "id": str(txn_id),
        "kind": "transfer",
        "from": str(PAYER),
        "to": str(to),
        "amount": str(amount),
        "created_at_us": str(at),
        "from_balance": str(from_balance),
        "to_balance": str(to_balance),
        "idem_key": key,
    }
    if fingerprint is not None:  # the fingerprint recorded under the key, on every leg
        record["idem_fp"] = fingerprint
    return record


async def test_a_batch_is_stamped_past_the_buckets_clock(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    """As every money script's (tests/test_lua_scripts.py); its legs share the stamp."""
    await money.deposit(PAYER, 1_000)
    ahead_us = int(time.time() * 1_000_000) + 3_600_000_000
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    accepted = await batches.transfer_batch(PAYER, [Leg(2, 1), Leg(3, 1)])
    assert accepted.created_at_us == ahead_us + 1
    stamps = [record["created_at_us"] for record in await stream_fields(redis_client)]
    assert stamps[1:] == [str(ahead_us + 1)] * 2


async def test_one_leg(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 1_000)
    accepted = await batches.transfer_batch(PAYER, [Leg(2, 1)])
    assert accepted == BatchAccepted(2, accepted.created_at_us, replayed=False)
    assert abs(accepted.created_at_us - time.time() * 1_000_000) < 5_000_000
    assert (await balance(redis_client, 1), await balance(redis_client, 2)) == (999, 1)
    assert (await stream_fields(redis_client))[1:] == [
        transfer_record(2, 2, 1, accepted.created_at_us, 999, 1)
    ]
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == b"2"


async def test_a_hundred_legs_take_consecutive_ids_and_one_record_each(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 1_000_000)
    legs = [Leg(2 + i % 3, 100 + i) for i in range(MAX_BATCH_LEGS)]
    accepted = await batches.transfer_batch(PAYER, legs, idempotency_key="hundred")
    assert accepted.first_txn_id == 2
    records = (await stream_fields(redis_client))[1:]
    expected, payer_left, credited = [], 1_000_000, Counter[int]()
    for i, leg in enumerate(legs):
        assert leg.to_user_id is not None
        payer_left -= leg.amount_kopecks
        credited[leg.to_user_id] += leg.amount_kopecks
        expected.append(
            transfer_record(
                2 + i,
                leg.to_user_id,
                leg.amount_kopecks,
                accepted.created_at_us,
                payer_left,
                credited[leg.to_user_id],
                "hundred",
                fingerprint(
                    ",".join(f"{leg.to_user_id}={leg.amount_kopecks}" for leg in legs)
                ).decode(),
            )
        )
    assert records == expected
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(1 + MAX_BATCH_LEGS).encode()
    assert await balance(redis_client, PAYER) == payer_left
    for user_id in (2, 3, 4):
        assert await balance(redis_client, user_id) == credited[user_id]


async def test_arguments_no_request_can_produce_are_refused_in_python(
    batches: BatchScripts, redis_client: RedisClient, users: None
) -> None:
    before = await snapshot(redis_client)
    bad_batches: list[list[Leg]] = [
        [],
        [Leg(2, 1)] * (MAX_BATCH_LEGS + 1),
        [Leg(2, 0)],
        [Leg(2, MAX_AMOUNT_KOPECKS + 1)],
        [Leg(None, 5)],
        [Leg(0, 5)],
        [Leg(None, 5, "no spaces allowed")],
        [Leg(2, True)],
    ]
    for legs in bad_batches:
        with pytest.raises(ValueError, match=r"leg|amount|bad"):
            await batches.transfer_batch(PAYER, legs)
    with pytest.raises(ValueError, match="bad user id"):
        await batches.transfer_batch(0, [Leg(2, 1)])
    assert await snapshot(redis_client) == before


async def test_amounts_one_and_the_largest(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, MAX_AMOUNT_KOPECKS)
    await money.deposit(PAYER, 1)
    await batches.transfer_batch(PAYER, [Leg(2, MAX_AMOUNT_KOPECKS), Leg(3, 1)])
    assert await balance(redis_client, PAYER) == 0
    assert await balance(redis_client, 2) == MAX_AMOUNT_KOPECKS
    assert await balance(redis_client, 3) == 1


async def test_one_recipient_in_several_legs(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    accepted = await batches.transfer_batch(PAYER, [Leg(2, 10), Leg(3, 20), Leg(2, 30)])
    at = accepted.created_at_us
    assert (await stream_fields(redis_client))[1:] == [
        transfer_record(2, 2, 10, at, 90, 10),
        transfer_record(3, 3, 20, at, 70, 20),
        transfer_record(4, 2, 30, at, 40, 40),
    ]


async def test_a_leg_by_name_that_resolved_pays_the_id(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    await batches.transfer_batch(PAYER, [Leg(2, 10, "Bob"), Leg(2, 5)])
    assert await balance(redis_client, 2) == 15


def fingerprint(legs: str) -> bytes:
    """What a batch's idempotency record keeps: "batch:" and the SHA-1 of its legs, each
    "<to>=<amount>" (<to>: the id, or "@" and the name in lower case), joined by ","."""
    return b"batch:" + hashlib.sha1(legs.encode()).hexdigest().encode()


async def test_money_moved_is_recorded_by_id_a_refusal_by_name(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    sent = await batches.transfer_batch(PAYER, [Leg(2, 10, "Bob"), Leg(3, 5, "carol")], "ok")
    record = await redis_client.hgetall(keyspace.idempotency(PAYER, "ok"))
    assert record == {
        b"fingerprint": fingerprint("2=10,3=5"),
        b"outcome": b"ok",
        b"txn_id": str(sent.first_txn_id).encode(),
        b"created_at_us": str(sent.created_at_us).encode(),
        b"leg": b"",
    }
    # By name again (any spelling), or by id: a retry.
    for legs in ([Leg(2, 10, "BOB"), Leg(3, 5, "Carol")], [Leg(2, 10), Leg(3, 5)]):
        assert (await batches.transfer_batch(PAYER, legs, "ok")).replayed
    with pytest.raises(Refused) as short:
        await batches.transfer_batch(PAYER, [Leg(2, 10, "Bob"), Leg(3, 500)], "short")
    recorded = await redis_client.hget(keyspace.idempotency(PAYER, "short"), "fingerprint")
    assert recorded == fingerprint("@bob=10,3=500")
    assert (await refused_leg(batches, [Leg(2, 10, "bob"), Leg(3, 500)], "short")).replayed
    # A refusal by name retried by id is another request, as for a transfer.
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await batches.transfer_batch(PAYER, [Leg(2, 10), Leg(3, 500)], "short")
    assert short.value.field == "transfers[1].amount"
    assert await balance(redis_client, PAYER) == 85


async def refused_leg(batches: BatchScripts, legs: list[Leg], key: str | None = None) -> Refused:
    with pytest.raises(Refused) as info:
        await batches.transfer_batch(PAYER, legs, idempotency_key=key)
    return info.value


async def test_every_refusal_names_its_leg_and_writes_nothing(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    before = await snapshot(redis_client)
    cases: list[tuple[list[Leg], refusals.Refusal, str | None]] = [
        (
            [Leg(2, 1), Leg(3, 1), Leg(99, 1)],
            refusals.RECIPIENT_NOT_FOUND,
            "transfers[2].to_user_id",
        ),
        (
            [Leg(2, 1), Leg(None, 1, "Ghost")],
            refusals.RECIPIENT_NOT_FOUND,
            "transfers[1].to_username",
        ),
        ([Leg(99, 1, "ghost")], refusals.RECIPIENT_NOT_FOUND, "transfers[0].to_username"),
        ([Leg(2, 1), Leg(PAYER, 1)], refusals.SELF_TRANSFER, "transfers[1].to_user_id"),
        ([Leg(PAYER, 1, "Myself")], refusals.SELF_TRANSFER, "transfers[0].to_username"),
        ([Leg(2, 60), Leg(3, 40), Leg(4, 1)], refusals.INSUFFICIENT_FUNDS, "transfers[2].amount"),
        ([Leg(2, 101)], refusals.INSUFFICIENT_FUNDS, "transfers[0].amount"),
        # The first leg at fault is named, whatever the later ones are.
        ([Leg(2, 100), Leg(3, 1), Leg(99, 1)], refusals.INSUFFICIENT_FUNDS, "transfers[1].amount"),
        (
            [Leg(2, 1), Leg(99, 1), Leg(3, 500)],
            refusals.RECIPIENT_NOT_FOUND,
            "transfers[1].to_user_id",
        ),
        ([Leg(2, 1), Leg(PAYER, 1), Leg(99, 1)], refusals.SELF_TRANSFER, "transfers[1].to_user_id"),
    ]
    for legs, refusal, field in cases:
        refused = await refused_leg(batches, legs)
        assert (refused.refusal, refused.field, refused.replayed) == (refusal, field, False), legs
    with refusing(refusals.ACCOUNT_NOT_FOUND) as no_payer:
        await batches.transfer_batch(98, [Leg(2, 1)])
    assert no_payer.value.field is None
    after = await snapshot(redis_client)
    # Their one write: the four 404s counted against probing.
    assert after.pop(keyspace.recipient_misses_of_user(PAYER).encode()) == b"4"
    assert after == before


async def test_the_recipient_ceiling_counts_every_leg_and_incoming_money(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 1_000)
    # Recipient 2 is 100 below the ceiling, 40 of which pending holds toward it will bring.
    for _ in range(MAX_BALANCE_KOPECKS // MAX_AMOUNT_KOPECKS - 1):
        await money.deposit(2, MAX_AMOUNT_KOPECKS)
    await money.deposit(2, MAX_AMOUNT_KOPECKS - 100)
    await redis_client.hset(keyspace.user(2), "incoming_kopecks", 40)
    before = await snapshot(redis_client)
    refused = await refused_leg(batches, [Leg(2, 30), Leg(3, 500), Leg(2, 31)])
    assert (refused.refusal, refused.field) == (
        refusals.BALANCE_LIMIT_EXCEEDED,
        "transfers[2].amount",
    )
    assert await snapshot(redis_client) == before
    await batches.transfer_batch(PAYER, [Leg(2, 30), Leg(3, 500), Leg(2, 30)])
    assert await balance(redis_client, 2) == MAX_BALANCE_KOPECKS - 40


async def test_a_batch_never_crosses_the_end_of_an_epoch(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    last = TXN_IDS_PER_EPOCH - 1  # the last id of epoch 0
    await redis_client.set(keyspace.txn_seq(BUCKET), last - 3)
    before = await snapshot(redis_client)
    with refusing(refusals.EPOCH_EXHAUSTED) as crossing:
        await batches.transfer_batch(PAYER, [Leg(2, 1)] * 4, idempotency_key="k")
    assert crossing.value.field is None
    assert await snapshot(redis_client) == before  # not recorded either
    accepted = await batches.transfer_batch(PAYER, [Leg(2, 1)] * 3, idempotency_key="k")
    assert accepted.first_txn_id == last - 2
    assert [r["id"] for r in (await stream_fields(redis_client))[1:]] == [
        str(last - 2),
        str(last - 1),
        str(last),
    ]
    with refusing(refusals.EPOCH_EXHAUSTED):
        await batches.transfer_batch(PAYER, [Leg(2, 1)])
    # A later epoch, from its start.
    await redis_client.set(keyspace.txn_seq(BUCKET), 7 * TXN_IDS_PER_EPOCH)
    later = await batches.transfer_batch(PAYER, [Leg(3, 1)] * 2)
    assert later.first_txn_id == 7 * TXN_IDS_PER_EPOCH + 1


async def test_replays_and_key_reuse(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 1_000)
    legs = [Leg(2, 100), Leg(None, 50, "Carol"), Leg(3, 100)]
    with pytest.raises(Refused):
        await batches.transfer_batch(PAYER, legs)
    sent = await batches.transfer_batch(PAYER, [Leg(2, 100), Leg(3, 200)], "k")
    again = await batches.transfer_batch(PAYER, [Leg(2, 100), Leg(3, 200)], "k")
    assert again == BatchAccepted(sent.first_txn_id, sent.created_at_us, replayed=True)
    # Money moved: recorded by id, so a leg by the name that resolved to that id is a retry.
    by_name = await batches.transfer_batch(PAYER, [Leg(2, 100, "Bob"), Leg(3, 200)], "k")
    assert by_name == again
    assert await balance(redis_client, PAYER) == 700
    recorded = await redis_client.hget(keyspace.idempotency(PAYER, "k"), "fingerprint")
    assert recorded == fingerprint("2=100,3=200")
    before = await snapshot(redis_client)
    for other in (
        [Leg(2, 100), Leg(3, 201)],
        [Leg(3, 200), Leg(2, 100)],
        [Leg(2, 100)],
    ):
        with refusing(refusals.IDEMPOTENCY_KEY_REUSED) as reused:
            await batches.transfer_batch(PAYER, other, "k")
        assert reused.value.field is None
    # Keys are per user across every money endpoint.
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.transfer(PAYER, 2, 100, "k")
    assert await snapshot(redis_client) == before
    await money.deposit(PAYER, 5, "dep")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await batches.transfer_batch(PAYER, [Leg(2, 5)], "dep")
    assert [await balance(redis_client, u) for u in (1, 2, 3)] == [705, 100, 200]


async def test_replayed_refusals_keep_their_leg(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    by_name = [Leg(2, 10), Leg(None, 10, "Ghost")]
    first = await refused_leg(batches, by_name, "ghost")
    assert (first.refusal, first.field, first.replayed) == (
        refusals.RECIPIENT_NOT_FOUND,
        "transfers[1].to_username",
        False,
    )
    recorded = await redis_client.hget(keyspace.idempotency(PAYER, "ghost"), "fingerprint")
    assert recorded == fingerprint("2=10,@ghost=10")  # a refusal: by name
    # The name is registered (as user 4) since: the retry still replays the refusal.
    replay = await refused_leg(batches, [Leg(2, 10), Leg(4, 10, "GHOST")], "ghost")
    assert (replay.refusal, replay.field, replay.replayed) == (
        refusals.RECIPIENT_NOT_FOUND,
        "transfers[1].to_username",
        True,
    )
    short = await refused_leg(batches, [Leg(2, 60), Leg(3, 41)], "short")
    assert (short.refusal, short.field) == (refusals.INSUFFICIENT_FUNDS, "transfers[1].amount")
    await money.deposit(PAYER, 1_000)
    replay = await refused_leg(batches, [Leg(2, 60), Leg(3, 41)], "short")
    assert (replay.refusal, replay.field, replay.replayed) == (
        refusals.INSUFFICIENT_FUNDS,
        "transfers[1].amount",
        True,
    )
    assert await redis_client.hgetall(keyspace.idempotency(PAYER, "short")) == {
        b"fingerprint": fingerprint("2=60,3=41"),
        b"outcome": b"insufficient_funds",
        b"txn_id": b"",
        b"created_at_us": b"",
        b"leg": b"1",
    }
    # A self transfer is a validation error: not recorded, the key stays free.
    selfish = await refused_leg(batches, [Leg(2, 1), Leg(PAYER, 1)], "self")
    assert selfish.refusal is refusals.SELF_TRANSFER
    assert not await redis_client.exists(keyspace.idempotency(PAYER, "self"))
    await batches.transfer_batch(PAYER, [Leg(2, 1)], "self")
    assert (await balance(redis_client, 2), await balance(redis_client, 4)) == (1, 0)


async def test_available_counts_holds_and_releases_expired_ones_only_on_success(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 1_000)
    now = now_us()
    await put_hold(redis_client, PAYER, 501, 2, 600, now + HOUR_US)  # pending: keeps 600
    await put_hold(redis_client, PAYER, 502, 3, 150, now - 1)  # expired: available again
    # available = 1000 - 750 + 150 = 400
    before = await snapshot(redis_client)
    refused = await refused_leg(batches, [Leg(3, 200), Leg(4, 201)])
    assert (refused.refusal, refused.field) == (refusals.INSUFFICIENT_FUNDS, "transfers[1].amount")
    assert await snapshot(redis_client) == before
    accepted = await batches.transfer_batch(PAYER, [Leg(3, 200), Leg(4, 200)])
    wallet = await redis_client.hgetall(keyspace.user(PAYER))
    assert wallet == {b"balance_kopecks": b"600", b"held_kopecks": b"600"}
    assert await redis_client.zrange(keyspace.pending_holds(PAYER), 0, -1) == [b"501:2:600"]
    records = (await stream_fields(redis_client))[1:]
    assert records[0] == {
        "kind": "hold_expired",
        "hold": "502",
        "from": str(PAYER),
        "to": "3",
        "amount": "150",
        "created_at_us": str(accepted.created_at_us),
        "expires_at_us": str(now - 1),
        "idem_key": "",
    }
    assert [r["id"] for r in records[1:]] == ["2", "3"]
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await batches.transfer_batch(PAYER, [Leg(2, 1)])


async def test_the_session_is_checked(
    batches: BatchScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, 100)
    with refusing(refusals.SESSION_ENDED):
        await batches.transfer_batch(
            PAYER, [Leg(2, 1)], session=SessionCheck("wallet_session:{b0}:gone", 3600, 600)
        )
    assert await balance(redis_client, PAYER) == 100


async def test_a_lost_reply_is_answered_with_the_batch(
    batches: BatchScripts,
    money: MoneyScripts,
    redis_client: RedisClient,
    users: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await money.deposit(PAYER, 100)
    monkeypatch.setattr(batches, "_transfer_batch", LosesTheReply(batches._transfer_batch))
    accepted = await batches.transfer_batch(PAYER, [Leg(2, 10), Leg(3, 20)])
    assert (accepted.first_txn_id, accepted.replayed) == (2, False)
    records = (await stream_fields(redis_client))[1:]
    assert [(r["id"], r["created_at_us"]) for r in records] == [
        ("2", str(accepted.created_at_us)),
        ("3", str(accepted.created_at_us)),
    ]


async def test_a_lost_request_that_did_not_run_never_runs(
    batches: BatchScripts,
    money: MoneyScripts,
    redis_client: RedisClient,
    users: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await money.deposit(PAYER, 100)
    lost = LosesTheReply(batches._transfer_batch, runs=False)
    monkeypatch.setattr(batches, "_transfer_batch", lost)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await batches.transfer_batch(PAYER, [Leg(2, 10)])
    before = await snapshot(redis_client)
    assert await lost.arrives_late() == [b"not_applied", b"", b"", b"", b"0"]
    assert await snapshot(redis_client) == before


async def test_concurrent_batches_on_one_balance(
    redis_url: str, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    settings = Settings(redis_url=redis_url, redis_max_connections=8)
    clients = [connect_redis(settings) for _ in range(4)]
    scripts = [BatchScripts(client, settings) for client in clients]
    await money.deposit(PAYER, 10_000)  # 20 batches of 500

    async def one(n: int) -> BatchAccepted | Refused:
        legs = [Leg(2, 100), Leg(3 + n % 2, 150), Leg(2, 250)]
        try:
            return await scripts[n % len(scripts)].transfer_batch(PAYER, legs, f"b{n}")
        except Refused as refused:
            return refused

    results = await asyncio.gather(*(one(n) for n in range(30)))
    for client in clients:
        await client.aclose()
    accepted = [r for r in results if isinstance(r, BatchAccepted)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(accepted) == 20
    assert {(r.refusal, r.field) for r in refused} == {
        (refusals.INSUFFICIENT_FUNDS, "transfers[0].amount")
    }
    assert await balance(redis_client, PAYER) == 0
    assert sum([await balance(redis_client, u) for u in (2, 3, 4)]) == 10_000
    records = (await stream_fields(redis_client))[1:]
    assert len(records) == 60
    firsts = sorted(r.first_txn_id for r in accepted)
    assert firsts == list(range(2, 62, 3))  # each batch's ids are consecutive
    assert min(int(r["from_balance"]) for r in records) == 0
