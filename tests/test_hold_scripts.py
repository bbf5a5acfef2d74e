"""The hold scripts (create, capture, void, expire), read_balance and the transfer's use of
available money, called directly against a real server through their bindings
(service/redis/holds.py). docs/holds.md gives the design these tests hold them to."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import replace
from typing import cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerHoldEvent, User
from service.domain import refusals
from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.holds import Hold
from service.domain.limits import (
    MAX_HOLD_EXPIRES_IN_S,
    MAX_PENDING_HOLDS_PER_PAYER,
    MIN_HOLD_EXPIRES_IN_S,
)
from service.domain.refusals import Refused
from service.ledger.hold_sweeper import run_hold_sweeper, run_writer_and_sweeper
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.holds import HoldAccepted, HoldScripts
from service.redis.money import MoneyScripts, SessionCheck, WalletAmounts
from service.redis.scripts import load_script_source
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import refusing, snapshot, stream_fields
from tests.support.lost_replies import LosesTheReply

PAYER, PAYEE, STRANGER = 1, 2, 3
HOUR_S = 3600


@pytest.fixture
def holds(redis_client: RedisClient, settings: Settings) -> HoldScripts:
    return HoldScripts(redis_client, settings)


@pytest.fixture
async def users(money: MoneyScripts) -> None:
    for user_id in (PAYER, PAYEE, STRANGER):
        await money.register_user(user_id)
    await money.deposit(PAYER, 10_000)


async def amounts(redis: RedisClient, user_id: int) -> tuple[int, int, int]:
    """(balance, held, incoming) as stored."""
    raw = cast(
        list[bytes | None],
        await redis.hmget(
            keyspace.user(user_id), ["balance_kopecks", "held_kopecks", "incoming_kopecks"]
        ),
    )
    assert raw[0] is not None, f"user {user_id} has no wallet"
    return int(raw[0]), int(raw[1] or 0), int(raw[2] or 0)


async def assert_invariants(redis: RedisClient, user_ids: tuple[int, ...] = (1, 2, 3)) -> None:
    """docs/holds.md: 0 <= held <= balance; held = the sum of holds:{payer}; incoming = the
    sum of the holds:due holds toward the user; balance + incoming <= 10^15."""
    due = cast(list[bytes], await redis.zrange(keyspace.holds_due(BUCKET), 0, -1))
    incoming_by_user = Counter[int]()
    for member in due:
        _, _, to_id, amount = (int(part) for part in member.split(b":"))
        incoming_by_user[to_id] += amount
    for user_id in user_ids:
        balance_kopecks, held, incoming = await amounts(redis, user_id)
        members = cast(list[bytes], await redis.zrange(keyspace.pending_holds(user_id), 0, -1))
        assert 0 <= held <= balance_kopecks, user_id
        assert held == sum(int(m.split(b":")[2]) for m in members), user_id
        assert incoming == incoming_by_user[user_id], user_id
        assert balance_kopecks + incoming <= MAX_BALANCE_KOPECKS, user_id


async def redis_now_us(redis: RedisClient) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def move_expiry(redis: RedisClient, hold: Hold, expires_at_us: int) -> None:
    """Rewrites a hold's expires_at_us everywhere Redis keeps it (the hash, both scores)."""
    await redis.hset(keyspace.hold(BUCKET, hold.hold_id), "expires_at_us", str(expires_at_us))
    payer_member = f"{hold.hold_id}:{hold.to_user_id}:{hold.amount_kopecks}"
    due_member = f"{hold.hold_id}:{hold.from_user_id}:{hold.to_user_id}:{hold.amount_kopecks}"
    await redis.zadd(
        keyspace.pending_holds(hold.from_user_id), {payer_member: expires_at_us}, xx=True
    )
    await redis.zadd(keyspace.holds_due(BUCKET), {due_member: expires_at_us}, xx=True)


async def stored_hold(redis: RedisClient, hold_id: int) -> Hold:
    raw = cast(dict[bytes, bytes], await redis.hgetall(keyspace.hold(BUCKET, hold_id)))
    return Hold.from_redis_hash(hold_id, raw)


async def create(
    holds: HoldScripts, amount: int, expires_in_s: int = HOUR_S, idempotency_key: str | None = None
) -> Hold:
    """A hold of PAYER for PAYEE, by id."""
    accepted = await holds.create(PAYER, PAYEE, amount, expires_in_s, idempotency_key)
    return accepted.hold


# Creation.


async def test_create_reserves_on_both_sides_and_records_the_hold(
    holds: HoldScripts,
    money: MoneyScripts,
    redis_client: RedisClient,
    users: None,
    settings: Settings,
) -> None:
    before_us = await redis_now_us(redis_client)
    accepted = await holds.create(PAYER, PAYEE, 3_000, HOUR_S, idempotency_key="h1")
    hold = accepted.hold
    assert not accepted.replayed
    assert hold.hold_id == 2  # from txn:seq, after the opening deposit's id 1
    assert before_us <= hold.created_at_us <= await redis_now_us(redis_client)
    assert hold == Hold(2, PAYER, PAYEE, 3_000, "pending", 0, hold.created_at_us,
                        hold.created_at_us + HOUR_S * 1_000_000, None)  # fmt: skip
    assert await stored_hold(redis_client, 2) == hold
    assert (await redis_client.hgetall(keyspace.hold(BUCKET, 2)))[b"capture_txn_id"] == b""
    ttl_s = await redis_client.ttl(keyspace.hold(BUCKET, 2))
    assert HOUR_S + settings.hold_retention_s - 5 <= ttl_s <= HOUR_S + settings.hold_retention_s
    assert await redis_client.zrange(keyspace.pending_holds(PAYER), 0, -1, withscores=True) == [
        (b"2:2:3000", float(hold.expires_at_us))
    ]
    assert await redis_client.zrange(keyspace.holds_due(BUCKET), 0, -1, withscores=True) == [
        (b"2:1:2:3000", float(hold.expires_at_us))
    ]
    assert await amounts(redis_client, PAYER) == (10_000, 3_000, 0)
    assert await amounts(redis_client, PAYEE) == (0, 0, 3_000)
    assert await money.balance(PAYER) == WalletAmounts(10_000, 3_000)
    assert (await money.balance(PAYER)).available_kopecks == 7_000
    assert await money.balance(PAYEE) == WalletAmounts(0, 0)
    assert (await stream_fields(redis_client))[-1] == {
        "kind": "hold_created",
        "hold": "2",
        "from": "1",
        "to": "2",
        "amount": "3000",
        "created_at_us": str(hold.created_at_us),
        "expires_at_us": str(hold.expires_at_us),
        "idem_key": "h1",
        "idem_fp": "hold:2:3000:3600",
    }
    assert await redis_client.hgetall(keyspace.idempotency(PAYER, "h1")) == {
        b"fingerprint": b"hold:2:3000:3600",
        b"outcome": b"ok",
        b"txn_id": b"2",
        b"created_at_us": str(hold.created_at_us).encode(),
        b"expires_at_us": str(hold.expires_at_us).encode(),
    }
    await assert_invariants(redis_client)


async def test_hold_events_are_stamped_past_the_buckets_clock(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    """As every money script's (tests/test_lua_scripts.py)."""
    ahead_us = int(time.time() * 1_000_000) + 3_600_000_000
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    captured = (await holds.create(PAYER, PAYEE, 100, HOUR_S)).hold
    voided = (await holds.create(PAYER, PAYEE, 100, HOUR_S)).hold
    assert (captured.created_at_us, voided.created_at_us) == (ahead_us + 1, ahead_us + 2)
    assert (await holds.capture(PAYEE, captured.hold_id, None)).created_at_us == ahead_us + 3
    await holds.void(PAYEE, voided.hold_id)
    stamps = [record["created_at_us"] for record in await stream_fields(redis_client)]
    assert stamps[-4:] == [str(ahead_us + n) for n in (1, 2, 3, 4)]


async def test_create_refusals_write_nothing_but_the_recorded_ones(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    before = await snapshot(redis_client)
    with refusing(refusals.SELF_TRANSFER):
        await holds.create(PAYER, PAYER, 10, HOUR_S, "self")
    with refusing(refusals.ACCOUNT_NOT_FOUND):
        await holds.create(9, PAYEE, 10, HOUR_S, "nowallet")
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await holds.create(PAYER, 9, 10, HOUR_S)
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await holds.create(PAYER, None, 10, HOUR_S, to_username="Ghost")
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await holds.create(PAYER, PAYEE, 10_001, HOUR_S)
    after = await snapshot(redis_client)
    # Their one write: the two 404s counted against probing.
    assert after.pop(keyspace.recipient_misses_of_user(PAYER).encode()) == b"2"
    assert after == before

    # With a key, the refusals that depend on the state are recorded and replayed.
    for key, to_id, name, amount, refusal, fingerprint in [
        ("r1", 9, None, 10, refusals.RECIPIENT_NOT_FOUND, b"hold:9:10:3600"),
        ("r2", None, "Ghost", 10, refusals.RECIPIENT_NOT_FOUND, b"hold:@ghost:10:3600"),
        ("r3", PAYEE, None, 10_001, refusals.INSUFFICIENT_FUNDS, b"hold:2:10001:3600"),
    ]:
        with refusing(refusal) as first:
            await holds.create(PAYER, to_id, amount, HOUR_S, key, to_username=name)
        assert not first.value.replayed
        record = await redis_client.hgetall(keyspace.idempotency(PAYER, key))
        assert record[b"fingerprint"] == fingerprint
        assert record[b"outcome"] == refusal.code.encode()
    await money.register_user(9)
    await money.deposit(PAYER, 10_000)
    with refusing(refusals.RECIPIENT_NOT_FOUND) as replay:
        await holds.create(PAYER, 9, 10, HOUR_S, "r1")
    assert replay.value.replayed
    with refusing(refusals.RECIPIENT_NOT_FOUND) as replay:
        await holds.create(PAYER, 9, 10, HOUR_S, "r2", to_username="GHOST")
    assert replay.value.replayed
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await holds.create(PAYER, PAYEE, 10_001, HOUR_S, "r3")
    assert replay.value.replayed
    # Not recorded: a validation refusal and a missing wallet.
    assert not await redis_client.exists(
        keyspace.idempotency(PAYER, "self"), keyspace.idempotency(9, "nowallet")
    )
    assert await amounts(redis_client, PAYER) == (20_000, 0, 0)
    await assert_invariants(redis_client, (1, 2, 3, 9))


async def test_amount_and_expiry_limits_at_and_one_past_the_edge(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await money.deposit(PAYER, MAX_AMOUNT_KOPECKS)
    smallest = await create(holds, 1, MIN_HOLD_EXPIRES_IN_S)
    largest = await create(holds, MAX_AMOUNT_KOPECKS, MAX_HOLD_EXPIRES_IN_S)
    assert smallest.expires_at_us - smallest.created_at_us == 60 * 1_000_000
    assert largest.expires_at_us - largest.created_at_us == 604_800 * 1_000_000
    assert (await stored_hold(redis_client, largest.hold_id)).amount_kopecks == 10**12
    assert await amounts(redis_client, PAYER) == (10**12 + 10_000, 10**12 + 1, 0)
    before = await snapshot(redis_client)
    for amount in (MAX_AMOUNT_KOPECKS + 1, 0, -1):
        with pytest.raises(ValueError, match="amount_kopecks"):
            await holds.create(PAYER, PAYEE, amount, HOUR_S)
    for expires_in_s in (MIN_HOLD_EXPIRES_IN_S - 1, MAX_HOLD_EXPIRES_IN_S + 1):
        with pytest.raises(ValueError, match="expires_in_s"):
            await holds.create(PAYER, PAYEE, 5, expires_in_s)
    for capture_amount in (MAX_AMOUNT_KOPECKS + 1, 0):
        with pytest.raises(ValueError, match="amount_kopecks"):
            await holds.capture(PAYEE, largest.hold_id, capture_amount)
    assert await snapshot(redis_client) == before
    await assert_invariants(redis_client)


async def test_a_payer_has_at_most_1000_pending_holds_and_expired_ones_do_not_count(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    made = [await create(holds, 1) for _ in range(MAX_PENDING_HOLDS_PER_PAYER)]
    with refusing(refusals.TOO_MANY_HOLDS):
        await create(holds, 1, idempotency_key="many")
    assert (await redis_client.hgetall(keyspace.idempotency(PAYER, "many")))[
        b"outcome"
    ] == b"too_many_holds"
    # One of them expires: it no longer counts, and the next hold releases it.
    await move_expiry(redis_client, made[0], await redis_now_us(redis_client))
    before = len(await stream_fields(redis_client))
    newest = await create(holds, 1)
    records = (await stream_fields(redis_client))[before:]
    assert [(r["kind"], r["hold"]) for r in records] == [
        ("hold_expired", str(made[0].hold_id)),
        ("hold_created", str(newest.hold_id)),
    ]
    assert await redis_client.zcard(keyspace.pending_holds(PAYER)) == 1000
    with refusing(refusals.TOO_MANY_HOLDS):
        await create(holds, 1)
    await assert_invariants(redis_client)


async def test_holds_from_30_concurrent_requests_never_overdraw(
    redis_url: str, redis_client: RedisClient, money: MoneyScripts
) -> None:
    """10,000 kopecks, 30 holds of 1,000 at once over several connections: exactly 10."""
    settings = Settings(redis_url=redis_url, redis_max_connections=8)
    clients = [connect_redis(settings) for _ in range(5)]
    scripts = [HoldScripts(client, settings) for client in clients]
    for user_id in (PAYER, PAYEE, STRANGER):
        await money.register_user(user_id)
    await money.deposit(PAYER, 10_000)

    async def one(n: int) -> Hold | str:
        try:
            accepted = await scripts[n % 5].create(PAYER, PAYEE + n % 2, 1_000, HOUR_S)
        except Refused as refusal:
            return refusal.code
        return accepted.hold

    results = await asyncio.gather(*(one(n) for n in range(30)))
    for client in clients:
        await client.aclose()
    made = [r for r in results if isinstance(r, Hold)]
    assert len(made) == 10
    assert Counter(r for r in results if isinstance(r, str)) == {"insufficient_funds": 20}
    assert len({h.hold_id for h in made}) == 10
    assert await amounts(redis_client, PAYER) == (10_000, 10_000, 0)
    assert await money.balance(PAYER) == WalletAmounts(10_000, 10_000)
    await assert_invariants(redis_client)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await money.transfer(PAYER, STRANGER, 1)


# Capture and void.


async def test_a_capture_of_the_whole_hold(
    holds: HoldScripts,
    money: MoneyScripts,
    redis_client: RedisClient,
    users: None,
    settings: Settings,
) -> None:
    hold = await create(holds, 3_000)
    captured = await holds.capture(PAYEE, hold.hold_id, None, idempotency_key="c1")
    assert (captured.hold_id, captured.from_user_id, captured.to_user_id) == (2, PAYER, PAYEE)
    assert (captured.txn_id, captured.amount_kopecks, captured.replayed) == (3, 3_000, False)
    assert await amounts(redis_client, PAYER) == (7_000, 0, 0)
    assert await amounts(redis_client, PAYEE) == (3_000, 0, 0)
    assert await stored_hold(redis_client, 2) == Hold(
        2, PAYER, PAYEE, 3_000, "captured", 3_000, hold.created_at_us, hold.expires_at_us, 3
    )
    ttl_s = await redis_client.ttl(keyspace.hold(BUCKET, 2))
    assert settings.hold_retention_s - 5 <= ttl_s <= settings.hold_retention_s
    assert await redis_client.zcard(keyspace.pending_holds(PAYER)) == 0
    assert await redis_client.zcard(keyspace.holds_due(BUCKET)) == 0
    assert (await stream_fields(redis_client))[-1] == {
        "id": "3",
        "kind": "transfer",
        "from": "1",
        "to": "2",
        "amount": "3000",
        "created_at_us": str(captured.created_at_us),
        "from_balance": "7000",
        "to_balance": "3000",
        "idem_key": "c1",
        "hold_id": "2",
        "idem_fp": "capture:2:all",
    }
    assert (await redis_client.hgetall(keyspace.idempotency(PAYEE, "c1")))[
        b"fingerprint"
    ] == b"capture:2:all"
    await assert_invariants(redis_client)


async def test_a_partial_capture_gives_the_rest_back_to_the_payer(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    hold = await create(holds, 3_000)
    other = await create(holds, 500)
    assert (await money.balance(PAYER)).available_kopecks == 6_500
    captured = await holds.capture(PAYEE, hold.hold_id, 1_000, idempotency_key="part")
    assert captured.amount_kopecks == 1_000
    assert await amounts(redis_client, PAYER) == (9_000, 500, 0)
    assert await amounts(redis_client, PAYEE) == (1_000, 0, 500)
    assert await money.balance(PAYER) == WalletAmounts(9_000, 500)
    assert (await stored_hold(redis_client, hold.hold_id)).captured_amount_kopecks == 1_000
    assert (await redis_client.hgetall(keyspace.idempotency(PAYEE, "part")))[
        b"fingerprint"
    ] == b"capture:2:1000"
    # Exactly the hold's amount is allowed; one more is a validation error, not recorded.
    with refusing(refusals.CAPTURE_EXCEEDS_HOLD) as exceeded:
        await holds.capture(PAYEE, other.hold_id, 501, idempotency_key="more")
    assert exceeded.value.field == "amount"
    assert not await redis_client.exists(keyspace.idempotency(PAYEE, "more"))
    assert (await holds.capture(PAYEE, other.hold_id, 500)).amount_kopecks == 500
    assert await amounts(redis_client, PAYER) == (8_500, 0, 0)
    await assert_invariants(redis_client)


async def test_a_void_releases_both_sides(
    holds: HoldScripts,
    money: MoneyScripts,
    redis_client: RedisClient,
    users: None,
    settings: Settings,
) -> None:
    hold = await create(holds, 4_000)
    accepted = await holds.void(PAYEE, hold.hold_id, idempotency_key="v1")
    voided = Hold(2, PAYER, PAYEE, 4_000, "voided", 0, hold.created_at_us, hold.expires_at_us, None)
    assert accepted == HoldAccepted(voided, replayed=False)
    assert await stored_hold(redis_client, 2) == voided
    assert await redis_client.ttl(keyspace.hold(BUCKET, 2)) >= settings.hold_retention_s - 5
    assert await amounts(redis_client, PAYER) == (10_000, 0, 0)
    assert await amounts(redis_client, PAYEE) == (0, 0, 0)
    record = (await stream_fields(redis_client))[-1]
    assert int(record.pop("created_at_us")) >= hold.created_at_us
    assert record == {
        "kind": "hold_voided",
        "hold": "2",
        "from": "1",
        "to": "2",
        "amount": "4000",
        "expires_at_us": str(hold.expires_at_us),
        "idem_key": "v1",
        "idem_fp": "void:2",
    }
    assert (await redis_client.hgetall(keyspace.idempotency(PAYEE, "v1")))[
        b"fingerprint"
    ] == b"void:2"
    assert (await money.transfer(PAYER, STRANGER, 10_000)).txn_id == 3  # a void issues no id
    await assert_invariants(redis_client)


async def test_only_the_payee_captures_or_voids(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    hold = await create(holds, 1_000)
    before = await snapshot(redis_client)
    for user_id in (PAYER, STRANGER):
        with refusing(refusals.HOLD_NOT_FOUND):
            await holds.capture(user_id, hold.hold_id, None)
        with refusing(refusals.HOLD_NOT_FOUND):
            await holds.void(user_id, hold.hold_id)
    # No such hold (never made, or its hash is gone): refused before any script.
    with refusing(refusals.HOLD_NOT_FOUND):
        await holds.capture(PAYEE, 999, None)
    with refusing(refusals.HOLD_NOT_FOUND):
        await holds.void(PAYEE, 999)
    assert await snapshot(redis_client) == before

    # With a key, "not yours" is recorded and replayed...
    for user_id in (PAYER, STRANGER):
        with refusing(refusals.HOLD_NOT_FOUND) as first:
            await holds.capture(user_id, hold.hold_id, None, idempotency_key="mine")
        assert not first.value.replayed
        with refusing(refusals.HOLD_NOT_FOUND) as replay:
            await holds.capture(user_id, hold.hold_id, None, idempotency_key="mine")
        assert replay.value.replayed
        with refusing(refusals.HOLD_NOT_FOUND):
            await holds.void(user_id, hold.hold_id, idempotency_key="v")
        assert await redis_client.hget(keyspace.idempotency(user_id, "v"), "outcome") == (
            b"hold_not_found"
        )
    # ... but a hold missing from Redis is not: the API then asks the ledger.
    with refusing(refusals.HOLD_NOT_FOUND) as missing:
        await holds.capture(PAYEE, 999, None, idempotency_key="gone")
    assert not missing.value.replayed
    with refusing(refusals.HOLD_NOT_FOUND):
        await holds.void(PAYEE, 999, idempotency_key="gone-too")
    assert not await redis_client.exists(
        keyspace.idempotency(PAYEE, "gone"), keyspace.idempotency(PAYEE, "gone-too")
    )
    assert await stored_hold(redis_client, hold.hold_id) == hold
    assert await amounts(redis_client, PAYER) == (10_000, 1_000, 0)
    await assert_invariants(redis_client)


async def test_a_hold_ends_once(holds: HoldScripts, redis_client: RedisClient, users: None) -> None:
    captured = await create(holds, 1_000)
    voided = await create(holds, 2_000)
    await holds.capture(PAYEE, captured.hold_id, 10)
    await holds.void(PAYEE, voided.hold_id)
    before = await snapshot(redis_client)
    for hold_id in (captured.hold_id, voided.hold_id):
        with refusing(refusals.HOLD_NOT_PENDING):
            await holds.capture(PAYEE, hold_id, 10)
        with refusing(refusals.HOLD_NOT_PENDING):
            await holds.void(PAYEE, hold_id)
    assert await snapshot(redis_client) == before
    with refusing(refusals.HOLD_NOT_PENDING):
        await holds.capture(PAYEE, captured.hold_id, None, idempotency_key="late")
    with refusing(refusals.HOLD_NOT_PENDING) as replay:
        await holds.capture(PAYEE, captured.hold_id, None, idempotency_key="late")
    assert replay.value.replayed
    assert await amounts(redis_client, PAYER) == (9_990, 0, 0)
    await assert_invariants(redis_client)


async def test_replays_and_key_reuse(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    first = await holds.create(PAYER, PAYEE, 1_000, HOUR_S, "k")
    again = await holds.create(PAYER, PAYEE, 1_000, HOUR_S, "k", to_username="someone")
    assert again == HoldAccepted(first.hold, replayed=True)
    for other in [(PAYEE, 1_001, HOUR_S), (PAYEE, 1_000, HOUR_S + 1), (STRANGER, 1_000, HOUR_S)]:
        with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
            await holds.create(PAYER, *other, "k")
    # Keys are per user, across every money endpoint.
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await holds.capture(PAYER, first.hold.hold_id, None, "k")
    hold_id = first.hold.hold_id
    second = await create(holds, 2_000)

    captured = await holds.capture(PAYEE, hold_id, 400, "c")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await holds.capture(PAYEE, hold_id, None, "c")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await holds.void(PAYEE, hold_id, "c")
    voided = await holds.void(PAYEE, second.hold_id, "v")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await holds.void(PAYEE, hold_id, "v")
    state = await snapshot(redis_client)
    # The replies are replayed even once the holds' hashes are gone (past their retention).
    await redis_client.delete(keyspace.hold(BUCKET, hold_id), keyspace.hold(BUCKET, second.hold_id))
    recaptured = await holds.capture(PAYEE, hold_id, 400, "c")
    assert recaptured.replayed
    assert recaptured == replace(captured, replayed=True)
    revoided = await holds.void(PAYEE, second.hold_id, "v")
    assert revoided == HoldAccepted(voided.hold, replayed=True)
    # The creation replays the hold as the first answer gave it (pending).
    assert await holds.create(PAYER, PAYEE, 1_000, HOUR_S, "k") == again
    state.pop(keyspace.hold(BUCKET, hold_id).encode())
    state.pop(keyspace.hold(BUCKET, second.hold_id).encode())
    assert await snapshot(redis_client) == state
    assert await amounts(redis_client, PAYER) == (9_600, 0, 0)
    await assert_invariants(redis_client)


async def test_money_scripts_check_the_session_first(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    hold = await create(holds, 100)
    session = {"created": int(time.time()), "session": {"user_id": PAYEE}}
    await redis_client.set("wallet_session:{b0}:bob", json.dumps(session))
    bob = SessionCheck("wallet_session:{b0}:bob", 3600, 600)
    before = await snapshot(redis_client)
    with refusing(refusals.SESSION_ENDED):
        await holds.create(PAYER, PAYEE, 10, HOUR_S, session=bob)
    for user_id in (PAYEE, STRANGER):
        gone = SessionCheck("wallet_session:{b0}:gone", 3600, 600)
        with refusing(refusals.SESSION_ENDED):
            await holds.capture(user_id, hold.hold_id, None, session=gone)
        with refusing(refusals.SESSION_ENDED):
            await holds.void(user_id, hold.hold_id, session=gone)
    assert await snapshot(redis_client) == before
    assert (await holds.capture(PAYEE, hold.hold_id, None, session=bob)).amount_kopecks == 100


# Expiry.


async def test_a_hold_expires_at_expires_at_exactly(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    ends_now = await create(holds, 1_000)
    ends_soon = await create(holds, 2_000)
    now_us = await redis_now_us(redis_client)
    await move_expiry(redis_client, ends_now, now_us)  # reached by the time a script runs
    await move_expiry(redis_client, ends_soon, now_us + 3_000_000)
    assert await money.balance(PAYER) == WalletAmounts(10_000, 2_000)
    before = await snapshot(redis_client)
    with refusing(refusals.HOLD_NOT_PENDING):
        await holds.capture(PAYEE, ends_now.hold_id, None)
    with refusing(refusals.HOLD_NOT_PENDING):
        await holds.void(PAYEE, ends_now.hold_id)
    assert await snapshot(redis_client) == before  # not swept by a refusal
    captured = await holds.capture(PAYEE, ends_soon.hold_id, None)
    assert captured.created_at_us < now_us + 3_000_000
    assert await amounts(redis_client, PAYER) == (8_000, 1_000, 0)
    assert await amounts(redis_client, PAYEE) == (2_000, 0, 1_000)
    await assert_invariants(redis_client)


async def test_expired_money_is_available_before_any_sweep_and_the_sweeper_ends_it(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    hold = await create(holds, 10_000)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await money.transfer(PAYER, STRANGER, 1)
    await move_expiry(redis_client, hold, await redis_now_us(redis_client))
    assert await money.balance(PAYER) == WalletAmounts(10_000, 0)
    records_before = len(await stream_fields(redis_client))
    sent = await money.transfer(PAYER, STRANGER, 10_000)
    records = (await stream_fields(redis_client))[records_before:]
    assert [r["kind"] for r in records] == ["hold_expired", "transfer"]
    assert records[0] == {
        "kind": "hold_expired",
        "hold": str(hold.hold_id),
        "from": "1",
        "to": "2",
        "amount": "10000",
        "created_at_us": str(sent.created_at_us),
        "expires_at_us": records[0]["expires_at_us"],
        "idem_key": "",
    }
    assert int(records[0]["expires_at_us"]) <= sent.created_at_us
    assert await amounts(redis_client, PAYER) == (0, 0, 0)
    # The payee's side waits for the sweeper; its status is derived meanwhile.
    assert await amounts(redis_client, PAYEE) == (0, 0, 10_000)
    stored = await stored_hold(redis_client, hold.hold_id)
    assert stored.status == "pending"
    assert stored.status_at(await redis_now_us(redis_client)) == "expired"
    await assert_invariants(redis_client)

    assert await holds.sweep(BUCKET, 100) == 1
    assert (await stored_hold(redis_client, hold.hold_id)).status == "expired"
    assert await amounts(redis_client, PAYEE) == (0, 0, 0)
    assert await redis_client.zcard(keyspace.holds_due(BUCKET)) == 0
    assert len(await stream_fields(redis_client)) == records_before + 2  # no second record
    assert await holds.sweep(BUCKET, 100) == 0
    await assert_invariants(redis_client)


async def test_the_sweeper_marks_due_holds_only_in_batches(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    due = [await create(holds, 1_000 + n) for n in range(3)]
    pending = await create(holds, 5)
    now_us = await redis_now_us(redis_client)
    for n, hold in enumerate(due):
        await move_expiry(redis_client, hold, now_us - 10 + n)
    records_before = len(await stream_fields(redis_client))
    assert await holds.sweep(BUCKET, 2) == 2
    assert await holds.sweep(BUCKET, 2) == 1
    assert await holds.sweep(BUCKET, 2) == 0
    for hold in due:
        assert (await stored_hold(redis_client, hold.hold_id)).status == "expired"
    assert await stored_hold(redis_client, pending.hold_id) == pending
    assert await amounts(redis_client, PAYER) == (10_000, 5, 0)
    assert await amounts(redis_client, PAYEE) == (0, 0, 5)
    records = (await stream_fields(redis_client))[records_before:]
    assert [(r["kind"], r["hold"], r["amount"], r["expires_at_us"]) for r in records] == [
        ("hold_expired", str(h.hold_id), str(h.amount_kopecks), str(now_us - 10 + n))
        for n, h in enumerate(due)
    ]
    assert all(r["from"] == "1" and r["to"] == "2" and r["idem_key"] == "" for r in records)
    await assert_invariants(redis_client)


async def test_hold_expire_is_idempotent_and_leaves_what_is_not_due(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    hold = await create(holds, 700)
    member = f"{hold.hold_id}:1:2:700"
    keys = [
        keyspace.hold(BUCKET, hold.hold_id),
        keyspace.user(PAYER),
        keyspace.pending_holds(PAYER),
        keyspace.holds_due(BUCKET),
        keyspace.txn_stream(BUCKET),
        keyspace.user(PAYEE),
    ]
    script = load_script_source("hold_expire")
    before = await snapshot(redis_client)
    assert await redis_client.eval(script, 6, *keys, member, "0") == [b"not_due", b""]
    assert await snapshot(redis_client) == before
    await move_expiry(redis_client, hold, await redis_now_us(redis_client))
    assert await redis_client.eval(script, 6, *keys, member, "0") == [b"expired", b""]
    after = await snapshot(redis_client)
    assert await redis_client.eval(script, 6, *keys, member, "0") == [b"gone", b""]
    assert await snapshot(redis_client) == after
    # Another payee's wallet; no payee's wallet; a payee's wallet across buckets.
    for bad, across in (([*keys[:5], keyspace.user(STRANGER)], "0"), (keys[:5], "0"), (keys, "1")):
        reply = await redis_client.eval(script, len(bad), *bad, member, across)
        assert reply == [b"invalid_argument", b""]
    assert await redis_client.eval(script, 6, *keys, f"{hold.hold_id}:1:1:700", "0") == [
        b"invalid_argument",
        b"",
    ]
    await assert_invariants(redis_client)


async def test_the_sweeper_settles_a_hold_whose_hash_is_gone(
    holds: HoldScripts, redis_client: RedisClient, users: None
) -> None:
    """A sweeper stopped longer than hold_retention_s finds the hash gone: the holds:due
    member still names the parties, so the payee's incoming is released all the same."""
    hold = await create(holds, 900)
    await move_expiry(redis_client, hold, await redis_now_us(redis_client))
    await redis_client.delete(keyspace.hold(BUCKET, hold.hold_id))
    assert await holds.sweep(BUCKET, 10) == 1
    assert await amounts(redis_client, PAYER) == (10_000, 0, 0)
    assert await amounts(redis_client, PAYEE) == (0, 0, 0)
    assert not await redis_client.exists(keyspace.hold(BUCKET, hold.hold_id))
    assert (await stream_fields(redis_client))[-1]["kind"] == "hold_expired"
    await assert_invariants(redis_client)


# Transfers, deposits and the ceiling.


async def test_a_transfer_spends_from_available_only(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    await create(holds, 6_000)
    before = await snapshot(redis_client)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await money.transfer(PAYER, STRANGER, 4_001)
    assert await snapshot(redis_client) == before
    await money.transfer(PAYER, STRANGER, 4_000)
    assert await amounts(redis_client, PAYER) == (6_000, 6_000, 0)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await create(holds, 1)
    await assert_invariants(redis_client)


async def test_the_ceiling_counts_what_holds_will_bring(
    holds: HoldScripts, money: MoneyScripts, redis_client: RedisClient, users: None
) -> None:
    """A capture is never refused: the payee's room was reserved when the hold was made,
    so create, deposits and transfers to the payee count incoming_kopecks."""
    # The payee's balance put near the ceiling directly (10^3 deposits would be slow).
    await redis_client.hset(keyspace.user(PAYEE), "balance_kopecks", MAX_BALANCE_KOPECKS - 100)
    before = await snapshot(redis_client)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await create(holds, 101)
    assert await snapshot(redis_client) == before
    hold = await create(holds, 100)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await money.deposit(PAYEE, 1)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await money.transfer(PAYER, PAYEE, 1)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await create(holds, 1)
    await holds.capture(PAYEE, hold.hold_id, None)
    assert await amounts(redis_client, PAYEE) == (MAX_BALANCE_KOPECKS, 0, 0)
    assert (await stream_fields(redis_client))[-1]["to_balance"] == "1000000000000000"
    # A partial capture leaves room again.
    await redis_client.hset(keyspace.user(PAYEE), "balance_kopecks", MAX_BALANCE_KOPECKS - 100)
    hold = await create(holds, 100)
    await holds.capture(PAYEE, hold.hold_id, 40)
    await money.deposit(PAYEE, 60)
    assert await amounts(redis_client, PAYEE) == (MAX_BALANCE_KOPECKS, 0, 0)
    await assert_invariants(redis_client)


async def test_read_balance_of_a_missing_wallet(money: MoneyScripts) -> None:
    with refusing(refusals.ACCOUNT_NOT_FOUND):
        await money.balance(5)
    with pytest.raises(ValueError, match="user id"):
        await money.balance(0)


# Lost replies.


def losing(
    holds: HoldScripts, script: str, runs: bool, monkeypatch: pytest.MonkeyPatch
) -> LosesTheReply:
    wrapper = LosesTheReply(getattr(holds, f"_{script}"), runs)
    monkeypatch.setattr(holds, f"_{script}", wrapper)
    return wrapper


async def test_lost_replies_are_answered_with_what_the_script_did(
    holds: HoldScripts, redis_client: RedisClient, users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    losing(holds, "create", True, monkeypatch)
    made = await holds.create(PAYER, PAYEE, 3_000, 600)
    assert made == HoldAccepted(await stored_hold(redis_client, made.hold.hold_id), False)
    partly = await holds.create(PAYER, PAYEE, 2_000, 600)

    losing(holds, "capture", True, monkeypatch)
    captured = await holds.capture(PAYEE, made.hold.hold_id, None)
    assert (captured.txn_id, captured.from_user_id, captured.amount_kopecks) == (4, PAYER, 3_000)
    assert (await stream_fields(redis_client))[-1]["created_at_us"] == str(captured.created_at_us)
    assert (await holds.capture(PAYEE, partly.hold.hold_id, 5)).amount_kopecks == 5

    third = await holds.create(PAYER, PAYEE, 1_000, 600)
    losing(holds, "void", True, monkeypatch)
    voided = await holds.void(PAYEE, third.hold.hold_id)
    assert voided.hold == await stored_hold(redis_client, third.hold.hold_id)
    assert voided.hold.status == "voided"
    assert await amounts(redis_client, PAYER) == (10_000 - 3_005, 0, 0)
    await assert_invariants(redis_client)


async def test_a_create_that_did_not_run_is_not_applied_and_never_will_be(
    holds: HoldScripts, redis_client: RedisClient, users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = losing(holds, "create", False, monkeypatch)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await holds.create(PAYER, PAYEE, 3_000, 600, "k")
    before = await snapshot(redis_client)
    assert (await lost.arrives_late())[0] == b"not_applied"
    assert await snapshot(redis_client) == before
    assert await amounts(redis_client, PAYER) == (10_000, 0, 0)
    monkeypatch.undo()
    assert (await holds.create(PAYER, PAYEE, 3_000, 600, "k")).replayed is False


# Malformed calls.

TOKEN = "t" * 22
HEAD = [
    keyspace.txn_seq(BUCKET),
    keyspace.txn_stream(BUCKET),
    keyspace.user(1),
    keyspace.request_outcome(1, TOKEN),
]
PAYEE_HEAD = [*HEAD[:2], keyspace.user(2), keyspace.request_outcome(2, TOKEN)]
NO_SESSION = ["0", "1", "1"]
CREATE_KEYS = [
    *HEAD,
    keyspace.pending_holds(1),
    keyspace.holds_due(BUCKET),
    keyspace.recipient_misses_of_user(1),
    keyspace.user(2),
    keyspace.txn_clock(BUCKET),
]
# ..., hold retention_s, recipient misses limit and window_ms
CREATE_ARGS = ["1", "2", "5", "60", "", "86400", *NO_SESSION, "", TOKEN, "60", "600"]
CREATE_ARGS += ["20", "3600000", ""]
ACTION_KEYS = [
    *PAYEE_HEAD,
    keyspace.hold(BUCKET, 2),
    keyspace.holds_due(BUCKET),
    keyspace.user(1),
    keyspace.pending_holds(1),
    keyspace.txn_clock(BUCKET),
]
CAPTURE_ARGS = ["2", "1", "2", "", "", "86400", *NO_SESSION, TOKEN, "60", "600"]
VOID_ARGS = ["2", "1", "2", "", "86400", *NO_SESSION, TOKEN, "60", "600"]


def _with(args: list[str], index: int, value: str) -> list[str]:
    return [*args[:index], value, *args[index + 1 :]]


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 3, "59")),
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 3, "604801")),
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 2, "1000000000001")),
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 12, "0")),
        ("hold_create", CREATE_KEYS, CREATE_ARGS[:-1]),
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 13, "0")),
        ("hold_create", CREATE_KEYS, _with(CREATE_ARGS, 14, "1000000000001")),
        ("hold_create", _with(CREATE_KEYS, 6, keyspace.recipient_misses_of_user(2)), CREATE_ARGS),
        ("hold_create", [*HEAD, keyspace.pending_holds(2), *CREATE_KEYS[5:]], CREATE_ARGS),
        ("hold_create", [*CREATE_KEYS[:-2], CREATE_KEYS[-1]], CREATE_ARGS),
        ("hold_create", [*CREATE_KEYS[:-2], keyspace.user(3), CREATE_KEYS[-1]], CREATE_ARGS),
        ("hold_capture", ACTION_KEYS, _with(CAPTURE_ARGS, 3, "0")),
        ("hold_capture", ACTION_KEYS, _with(CAPTURE_ARGS, 2, "3")),
        ("hold_capture", ACTION_KEYS, _with(CAPTURE_ARGS, 1, "3")),
        ("hold_capture", ACTION_KEYS, _with(CAPTURE_ARGS, 1, "")),
        ("hold_capture", [*ACTION_KEYS[:-3], ACTION_KEYS[-1]], CAPTURE_ARGS),
        ("hold_capture", [*HEAD, *ACTION_KEYS[4:]], CAPTURE_ARGS),
        ("hold_void", ACTION_KEYS, _with(VOID_ARGS, 2, "02")),
        ("hold_void", ACTION_KEYS, _with(VOID_ARGS, 10, "")),
        ("hold_void", [*ACTION_KEYS[:6], keyspace.user(3), *ACTION_KEYS[7:]], VOID_ARGS),
        ("read_balance", [keyspace.user(1), keyspace.pending_holds(2)], ["1"]),
    ],
)
async def test_hold_scripts_refuse_malformed_arguments_and_write_nothing(
    holds: HoldScripts,
    redis_client: RedisClient,
    users: None,
    script: str,
    keys: list[str],
    args: list[str],
) -> None:
    await create(holds, 100)
    before = await snapshot(redis_client)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] == b"invalid_argument"
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        ("hold_create", CREATE_KEYS, CREATE_ARGS),
        ("hold_capture", ACTION_KEYS, CAPTURE_ARGS),
        ("hold_void", ACTION_KEYS, VOID_ARGS),
    ],
)
async def test_the_well_formed_calls_the_malformed_ones_break_are_accepted(
    holds: HoldScripts,
    redis_client: RedisClient,
    users: None,
    script: str,
    keys: list[str],
    args: list[str],
) -> None:
    await create(holds, 100)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] == b"ok"
    await assert_invariants(redis_client)


# The sweeper loop (part of `wallet writer`).


async def test_the_sweeper_loop_retries_outages_and_stops_with_the_writer(
    holds: HoldScripts, redis_client: RedisClient, users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = await create(holds, 800)
    await move_expiry(redis_client, hold, await redis_now_us(redis_client))
    real_sweep = holds.sweep
    passes = 0

    async def down_once(bucket: int, limit: int) -> int:
        nonlocal passes
        passes += 1
        if passes == 1:
            raise RedisConnectionError("Connection refused")
        return await real_sweep(bucket, limit)

    monkeypatch.setattr(holds, "sweep", down_once)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(run_hold_sweeper(holds, BUCKET, 0.01, 10, stop))
    for _ in range(200):
        if (await stored_hold(redis_client, hold.hold_id)).status == "expired":
            break
        await asyncio.sleep(0.01)
    assert (await stored_hold(redis_client, hold.hold_id)).status == "expired"
    assert passes >= 2
    stop.set()
    await asyncio.wait_for(sweeper, 1)
    await assert_invariants(redis_client)


async def test_a_sweeper_bug_ends_the_sweeper(
    holds: HoldScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(bucket: int, limit: int) -> int:
        raise KeyError("bug")

    monkeypatch.setattr(holds, "sweep", bug)
    with pytest.raises(KeyError):
        await asyncio.wait_for(run_hold_sweeper(holds, BUCKET, 0.01, 10, asyncio.Event()), 1)


async def test_the_writer_and_the_sweeper_run_together_and_store_the_expiry(
    holds: HoldScripts, redis_client: RedisClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    """What `wallet writer` and `wallet serve --embedded` both run: the hold's creation and
    its expiry reach the ledger with no request touching the hold."""
    async with db_engine.begin() as connection:
        await connection.execute(
            insert(User),
            [{"id": u, "username": f"user{u}", "password_hash": "x"} for u in (PAYER, PAYEE)],
        )
    money = MoneyScripts(redis_client, settings)
    for user_id in (PAYER, PAYEE, STRANGER):
        await money.register_user(user_id)
    await money.deposit(PAYER, 1_000)
    await ensure_consumer_group(redis_client, BUCKET)
    hold = await create(holds, 600)
    await move_expiry(redis_client, hold, await redis_now_us(redis_client))
    stop = asyncio.Event()
    running = asyncio.create_task(run_writer_and_sweeper(settings, redis_client, db_engine, stop))
    try:
        for _ in range(500):
            async with db_engine.connect() as connection:
                event = (
                    await connection.execute(
                        select(LedgerHoldEvent.event).where(LedgerHoldEvent.hold_id == hold.hold_id)
                    )
                ).scalar()
            if event is not None:
                break
            await asyncio.sleep(0.01)
        assert event == "expired"
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    assert (await stored_hold(redis_client, hold.hold_id)).status == "expired"
    await assert_invariants(redis_client)
