"""Each Lua script, called directly against real Redis."""

import json
import time
from typing import cast

import pytest
from redis.exceptions import ResponseError

from service.domain import refusals
from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.redis import keyspace
from service.redis.money import Accepted, MoneyScripts, SessionCheck
from service.redis.scripts import LuaScript, load_script_source
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.helpers import StreamEntries, balance, refusing, snapshot, stream_fields


@pytest.fixture
async def users(money: MoneyScripts) -> tuple[int, int]:
    assert await money.register_user(1)
    assert await money.register_user(2)
    return 1, 2


async def test_register_user_is_idempotent(money: MoneyScripts, redis_client: RedisClient) -> None:
    assert await money.register_user(7) is True
    await money.deposit(7, 500)
    assert await money.register_user(7) is False
    assert await balance(redis_client, 7) == 500


async def test_deposit_moves_money_and_appends_one_record(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    before_us = int(time.time() * 1_000_000)
    first = await money.deposit(1, 10_000)
    second = await money.deposit(1, 1)
    assert (first.txn_id, second.txn_id) == (1, 2)
    assert not first.replayed
    assert before_us - 1_000_000 <= first.created_at_us <= time.time() * 1_000_000 + 1_000_000
    assert await balance(redis_client, 1) == 10_001
    records = await stream_fields(redis_client)
    assert records == [
        {
            "id": "1",
            "kind": "deposit",
            "from": "",
            "to": "1",
            "amount": "10000",
            "created_at_us": str(first.created_at_us),
            "from_balance": "",
            "to_balance": "10000",
            "idem_key": "",
        },
        {
            "id": "2",
            "kind": "deposit",
            "from": "",
            "to": "1",
            "amount": "1",
            "created_at_us": str(second.created_at_us),
            "from_balance": "",
            "to_balance": "10001",
            "idem_key": "",
        },
    ]


async def test_stamps_increase_with_ids_even_when_the_clock_steps_back(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    """Redis's clock may step back (NTP, a failover to a host whose clock is behind); a
    statement orders a user's transactions by (created_at, id), so every call is stamped
    past the bucket's last stamp."""
    ahead_us = int(time.time() * 1_000_000) + 3_600_000_000  # as if it stepped back an hour
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    deposited = await money.deposit(1, 100)
    sent = await money.transfer(1, 2, 40)
    assert (deposited.created_at_us, sent.created_at_us) == (ahead_us + 1, ahead_us + 2)
    records = await stream_fields(redis_client)
    assert [r["created_at_us"] for r in records] == [str(ahead_us + 1), str(ahead_us + 2)]
    assert int(cast(bytes, await redis_client.get(keyspace.txn_clock(BUCKET)))) == ahead_us + 2


async def test_deposit_to_unknown_account_writes_nothing(
    money: MoneyScripts, redis_client: RedisClient
) -> None:
    before = await snapshot(redis_client)
    with refusing(refusals.ACCOUNT_NOT_FOUND):
        await money.deposit(99, 100)
    assert await snapshot(redis_client) == before


async def test_amount_limit_exactly_at_and_one_past_the_edge(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, MAX_AMOUNT_KOPECKS)
    assert await balance(redis_client, 1) == MAX_AMOUNT_KOPECKS
    await money.transfer(1, 2, MAX_AMOUNT_KOPECKS)
    assert await balance(redis_client, 2) == MAX_AMOUNT_KOPECKS
    for bad in (MAX_AMOUNT_KOPECKS + 1, 0, -1):
        with pytest.raises(ValueError, match="amount_kopecks"):
            await money.deposit(1, bad)
        with pytest.raises(ValueError, match="amount_kopecks"):
            await money.transfer(2, 1, bad)


async def test_deposit_balance_limit_exactly_at_and_one_past_the_edge(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    for _ in range(MAX_BALANCE_KOPECKS // MAX_AMOUNT_KOPECKS - 1):
        await money.deposit(1, MAX_AMOUNT_KOPECKS)
    await money.deposit(1, MAX_AMOUNT_KOPECKS - 1)
    await money.deposit(1, 1)
    assert await balance(redis_client, 1) == MAX_BALANCE_KOPECKS
    records = await stream_fields(redis_client)
    assert records[-1]["to_balance"] == "1000000000000000"
    before = await snapshot(redis_client)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await money.deposit(1, 1)
    assert await snapshot(redis_client) == before


async def test_transfer_moves_money_and_records_both_balances(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 10_000)
    accepted = await money.transfer(1, 2, 2_500)
    assert accepted.txn_id == 2
    assert await balance(redis_client, 1) == 7_500
    assert await balance(redis_client, 2) == 2_500
    record = (await stream_fields(redis_client))[-1]
    assert record == {
        "id": "2",
        "kind": "transfer",
        "from": "1",
        "to": "2",
        "amount": "2500",
        "created_at_us": str(accepted.created_at_us),
        "from_balance": "7500",
        "to_balance": "2500",
        "idem_key": "",
    }


async def test_transfer_of_the_whole_balance_and_one_kopeck_more(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 300)
    before = await snapshot(redis_client)
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await money.transfer(1, 2, 301)
    assert await snapshot(redis_client) == before
    await money.transfer(1, 2, 300)
    assert await balance(redis_client, 1) == 0
    assert await balance(redis_client, 2) == 300


async def test_transfer_refusals_write_nothing(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 1_000)
    before = await snapshot(redis_client)
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await money.transfer(1, 3, 10)
    with refusing(refusals.SELF_TRANSFER):
        await money.transfer(1, 1, 10)
    with refusing(refusals.ACCOUNT_NOT_FOUND):
        await money.transfer(3, 1, 10)
    after = await snapshot(redis_client)
    # Their one write: the 404 counted against probing (lua/includes/recipient_misses.lua).
    assert after.pop(keyspace.recipient_misses_of_user(1).encode()) == b"1"
    assert after == before


async def test_transfer_recipient_balance_limit_at_and_past_the_edge(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    for _ in range(MAX_BALANCE_KOPECKS // MAX_AMOUNT_KOPECKS - 1):
        await money.deposit(2, MAX_AMOUNT_KOPECKS)
    await money.deposit(2, MAX_AMOUNT_KOPECKS - 10)
    await money.deposit(1, 100)
    await money.transfer(1, 2, 10)
    assert await balance(redis_client, 2) == MAX_BALANCE_KOPECKS
    before = await snapshot(redis_client)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await money.transfer(1, 2, 1)
    assert await snapshot(redis_client) == before


async def test_idempotent_replay_moves_money_once(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    first = await money.deposit(1, 700, idempotency_key="dep-1")
    again = await money.deposit(1, 700, idempotency_key="dep-1")
    assert again == type(first)(first.txn_id, first.created_at_us, replayed=True)
    sent = await money.transfer(1, 2, 200, idempotency_key="tr-1")
    resent = await money.transfer(1, 2, 200, idempotency_key="tr-1")
    assert (resent.txn_id, resent.replayed) == (sent.txn_id, True)
    assert await balance(redis_client, 1) == 500
    assert await balance(redis_client, 2) == 200
    records = await stream_fields(redis_client)
    assert [r["idem_key"] for r in records] == ["dep-1", "tr-1"]
    ttl = await redis_client.ttl(keyspace.idempotency(1, "dep-1"))
    assert 24 * 3600 - 10 <= ttl <= 24 * 3600


async def test_idempotency_key_reused_with_another_payload(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 700, idempotency_key="k")
    before = await snapshot(redis_client)
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.deposit(1, 701, idempotency_key="k")
    # Keys are scoped per user across both endpoints.
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.transfer(1, 2, 700, idempotency_key="k")
    assert await snapshot(redis_client) == before
    # Another user's identical key is independent.
    await money.deposit(2, 700, idempotency_key="k")
    assert await balance(redis_client, 2) == 700


async def test_refused_operation_is_replayed_as_refused(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    with refusing(refusals.INSUFFICIENT_FUNDS) as first:
        await money.transfer(1, 2, 100, idempotency_key="retry-me")
    assert not first.value.replayed
    await money.deposit(1, 1_000)
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await money.transfer(1, 2, 100, idempotency_key="retry-me")
    assert replay.value.replayed
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await money.transfer(1, 3, 100, idempotency_key="nobody")
    await money.register_user(3)
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await money.transfer(1, 3, 100, idempotency_key="nobody")
    assert await balance(redis_client, 1) == 1_000
    assert await balance(redis_client, 3) == 0


async def test_a_name_that_resolved_to_no_one_is_refused_and_replayed_as_refused(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 1_000)
    before = await snapshot(redis_client)
    with refusing(refusals.RECIPIENT_NOT_FOUND) as unkeyed:
        await money.transfer(1, None, 100, to_username="Ghost")
    assert not unkeyed.value.replayed
    # Without a key nothing is written but the 404 counted against probing.
    after = await snapshot(redis_client)
    assert after.pop(keyspace.recipient_misses_of_user(1).encode()) == b"1"
    assert after == before
    with refusing(refusals.RECIPIENT_NOT_FOUND) as first:
        await money.transfer(1, None, 100, "k", to_username="Ghost")
    assert not first.value.replayed
    record = await redis_client.hget(keyspace.idempotency(1, "k"), "fingerprint")
    assert record == b"transfer:@ghost:100"

    # Someone registers the name; the same request now resolves to them: still refused.
    await money.register_user(3)
    with refusing(refusals.RECIPIENT_NOT_FOUND) as replay:
        await money.transfer(1, 3, 100, "k", to_username="GHOST")
    assert replay.value.replayed
    # Counted once per first answer: the replay tells nothing new.
    assert await redis_client.get(keyspace.recipient_misses_of_user(1)) == b"2"
    # By the id alone, or for another amount, it is another request.
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.transfer(1, 3, 100, "k")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.transfer(1, 3, 101, "k", to_username="ghost")
    assert (await balance(redis_client, 1), await balance(redis_client, 3)) == (1_000, 0)

    # A request by name that resolved is recorded by the id: a retry by the id replays it.
    paid = await money.transfer(1, 3, 100, "k2", to_username="ghost")
    assert await money.transfer(1, 3, 100, "k2") == Accepted(
        paid.txn_id, paid.created_at_us, replayed=True
    )
    assert await balance(redis_client, 3) == 100


async def test_idempotency_records_keep_their_stored_form(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    """The hash kept under a key is also written by restore_idempotency.lua (`wallet
    rebuild`) and read by the tests' checkers; its fingerprints are compared with records
    stored before any change to the scripts, so they must not change."""
    deposited = await money.deposit(1, 700, idempotency_key="dep")
    assert await redis_client.hgetall(keyspace.idempotency(1, "dep")) == {
        b"fingerprint": b"deposit:700",
        b"outcome": b"ok",
        b"txn_id": str(deposited.txn_id).encode(),
        b"created_at_us": str(deposited.created_at_us).encode(),
    }
    sent = await money.transfer(1, 2, 200, idempotency_key="tr")
    assert await redis_client.hgetall(keyspace.idempotency(1, "tr")) == {
        b"fingerprint": b"transfer:2:200",
        b"outcome": b"ok",
        b"txn_id": str(sent.txn_id).encode(),
        b"created_at_us": str(sent.created_at_us).encode(),
    }
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await money.transfer(2, 1, 10_000, idempotency_key="short")
    assert await redis_client.hgetall(keyspace.idempotency(2, "short")) == {
        b"fingerprint": b"transfer:1:10000",
        b"outcome": b"insufficient_funds",
        b"txn_id": b"",
        b"created_at_us": b"",
    }
    # A record written earlier in this form (by an older version, or by a rebuild) replays.
    await redis_client.hset(
        keyspace.idempotency(2, "old"),
        mapping={
            "fingerprint": "deposit:5",
            "outcome": "ok",
            "txn_id": "41",
            "created_at_us": "17",
        },
    )
    assert await money.deposit(2, 5, idempotency_key="old") == Accepted(41, 17, replayed=True)


async def test_validation_refusals_are_not_recorded(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 100)
    with refusing(refusals.SELF_TRANSFER):
        await money.transfer(1, 1, 10, idempotency_key="self")
    assert not await redis_client.exists(keyspace.idempotency(1, "self"))
    await money.transfer(1, 2, 10, idempotency_key="self")
    assert await balance(redis_client, 2) == 10


async def test_scripts_survive_script_flush(
    money: MoneyScripts, redis_client: RedisClient, users: tuple[int, int]
) -> None:
    await money.deposit(1, 100)
    await redis_client.script_flush()
    await money.register_user(3)
    await money.deposit(1, 100)
    await redis_client.script_flush()
    await money.transfer(1, 3, 50)
    assert await balance(redis_client, 1) == 150
    assert await balance(redis_client, 3) == 50


TOKEN = "t" * 22
HEAD = [
    keyspace.txn_seq(BUCKET),
    keyspace.txn_stream(BUCKET),
    keyspace.user(1),
    keyspace.request_outcome(1, TOKEN),
]
CLOCK = keyspace.txn_clock(BUCKET)
DEPOSIT_KEYS = [*HEAD, CLOCK]
# A transfer's sender's holds and recipient misses follow the head; then the recipient,
# unless the name resolved to no one; then the clock.
SENDER_KEYS = [*HEAD, keyspace.pending_holds(1), keyspace.recipient_misses_of_user(1)]
UNRESOLVED_KEYS = [*SENDER_KEYS, CLOCK]
TRANSFER_KEYS = [*SENDER_KEYS, keyspace.user(2), CLOCK]
# Across buckets (the script knows no bucket count): the reservation's keys instead.
CROSSING_KEYS = [*SENDER_KEYS, keyspace.transit(BUCKET), keyspace.outbound_due(BUCKET), CLOCK]
NO_SESSION = ["0", "1", "1"]  # check session, absolute_s, idle_s
OUTCOME = [TOKEN, "60"]  # request token, outcome ttl_s
MISSES = ["20", "3600000"]  # recipient misses limit, window_ms
SAME_BUCKET = ["", ""]  # transfer: no verdict from another bucket, no deadline


def crossing(
    keys: list[str], to_user_id: str, to_username: str, verdict: str, deadline_ms: str
) -> tuple[str, list[str], list[str]]:
    """A transfer call from user 1 with the recipient's verdict from another bucket."""
    args = ["1", to_user_id, "5", "", "86400", *NO_SESSION, to_username, *OUTCOME, *MISSES]
    return ("transfer", keys, [*args, verdict, deadline_ms])


# Well-formed calls; each case below breaks one thing in one of them.
GOOD_CALLS = [
    ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION, *OUTCOME]),
    (
        "transfer",
        TRANSFER_KEYS,
        ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
    ),
    crossing(CROSSING_KEYS, "2", "", "expected", "60"),
    (
        "transfer",
        UNRESOLVED_KEYS,
        ["1", "", "5", "", "86400", *NO_SESSION, "ghost", *OUTCOME, *MISSES, *SAME_BUCKET],
    ),
]


@pytest.mark.parametrize(("script", "keys", "args"), GOOD_CALLS)
async def test_the_well_formed_calls_the_malformed_ones_break_are_accepted(
    redis_client: RedisClient,
    money: MoneyScripts,
    users: tuple[int, int],
    script: str,
    keys: list[str],
    args: list[str],
) -> None:
    await money.deposit(1, 1_000)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] in (b"ok", b"recipient_not_found")


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        ("deposit", DEPOSIT_KEYS, ["1", "0", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "1000000000001", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "-5", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "05", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "1.5", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "1e3", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["01", "5", "", "86400", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "0", *NO_SESSION, *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", ""]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", "2", "1", "1", *OUTCOME]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", "1", "1", "1", *OUTCOME]),
        (
            "deposit",
            [*DEPOSIT_KEYS, "wallet_session:{b0}:x"],
            ["1", "5", "", "86400", "1", "0", "1", *OUTCOME],
        ),
        (
            "deposit",
            [*DEPOSIT_KEYS, "wallet_session:{b0}:x"],
            ["1", "5", "", "86400", *NO_SESSION, *OUTCOME],
        ),
        (
            "transfer",
            [*TRANSFER_KEYS, "wallet_session:{b0}:x"],
            ["1", "2", "5", "", "86400", "1", "1", "0", "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "deposit",
            [
                keyspace.txn_seq(BUCKET),
                keyspace.txn_stream(BUCKET),
                keyspace.user(2),
                DEPOSIT_KEYS[3],
            ],
            ["1", "5", "", "86400", *NO_SESSION, *OUTCOME, *MISSES],
        ),
        (
            "deposit",
            [*DEPOSIT_KEYS, keyspace.idempotency(2, "k")],
            ["1", "5", "k", "86400", *NO_SESSION, *OUTCOME, *MISSES],
        ),
        (
            "deposit",
            [*DEPOSIT_KEYS, keyspace.idempotency(1, "k" * 65)],
            ["1", "5", "k" * 65, "86400", *NO_SESSION, *OUTCOME, *MISSES],
        ),
        (
            "deposit",
            [*DEPOSIT_KEYS, keyspace.idempotency(1, "k\n")],
            ["1", "5", "k\n", "86400", *NO_SESSION, *OUTCOME, *MISSES],
        ),
        (
            "deposit",
            [*DEPOSIT_KEYS, keyspace.idempotency(1, "k")],
            ["1", "5", "", "86400", *NO_SESSION, *OUTCOME, *MISSES],
        ),
        # The request token: its shape, its key (the acting user's), the record's TTL.
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION, "t" * 15, "60"]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION, "t:" * 11, "60"]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION, "u" * 22, "60"]),
        ("deposit", DEPOSIT_KEYS, ["1", "5", "", "86400", *NO_SESSION, TOKEN, "0"]),
        (
            "deposit",
            [*DEPOSIT_KEYS[:3], keyspace.request_outcome(2, TOKEN)],
            ["1", "5", "", "86400", *NO_SESSION, *OUTCOME],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "2", "5", "", "86400", *NO_SESSION, "", TOKEN, "0", *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "2", "0", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["2", "1", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        ("transfer", TRANSFER_KEYS, ["1", "2", "5", ""]),
        # The sender's holds: missing, or another user's.
        (
            "transfer",
            [*DEPOSIT_KEYS, keyspace.user(2)],
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            [*DEPOSIT_KEYS, keyspace.pending_holds(2), keyspace.user(2)],
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        ("transfer", TRANSFER_KEYS, ["1", "2", "5", "", "86400", *NO_SESSION, ""]),
        # The recipient misses: missing, another user's, a limit or window of 0.
        (
            "transfer",
            [*DEPOSIT_KEYS, keyspace.pending_holds(1), keyspace.user(2)],
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            [*UNRESOLVED_KEYS[:5], keyspace.recipient_misses_of_user(2), keyspace.user(2)],
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, "0", "1"],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "2", "5", "", "86400", *NO_SESSION, "", *OUTCOME, "1", "0"],
        ),
        (
            "transfer",
            [*TRANSFER_KEYS, keyspace.idempotency(2, "k")],
            ["1", "2", "5", "k", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        # A name that resolved to no one: no recipient key, and the name is required.
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "", "5", "", "86400", *NO_SESSION, "ghost", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            UNRESOLVED_KEYS,
            ["1", "", "5", "", "86400", *NO_SESSION, "", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            UNRESOLVED_KEYS,
            ["1", "", "5", "", "86400", *NO_SESSION, "gh", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            UNRESOLVED_KEYS,
            ["1", "", "5", "", "86400", *NO_SESSION, "g:host", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            DEPOSIT_KEYS,
            ["1", "", "5", "", "86400", *NO_SESSION, "gh\u00f6st", *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "transfer",
            TRANSFER_KEYS,
            ["1", "2", "5", "", "86400", *NO_SESSION, "x" * 33, *OUTCOME, *MISSES, *SAME_BUCKET],
        ),
        (
            "deposit",
            [*HEAD, keyspace.txn_seq(BUCKET)],
            ["1", "5", "", "86400", *NO_SESSION, *OUTCOME],
        ),
        # Across buckets: a verdict needs transit:{b} and outbound:due:{b} instead of the
        # recipient's wallet, a known verdict, and a deadline; a deadline needs a verdict.
        crossing(TRANSFER_KEYS, "2", "", "expected", "60"),
        crossing(CROSSING_KEYS, "2", "", "maybe", "60"),
        crossing(CROSSING_KEYS, "2", "", "expected", "0"),
        crossing(CROSSING_KEYS, "", "ghost", "expected", "6"),
        crossing(TRANSFER_KEYS, "2", "", "", "60"),
        ("register_user", [keyspace.user(2)], ["1"]),
        ("register_user", [keyspace.user(0)], ["0"]),
    ],
)
async def test_scripts_refuse_malformed_arguments_and_write_nothing(
    redis_client: RedisClient,
    money: MoneyScripts,
    users: tuple[int, int],
    script: str,
    keys: list[str],
    args: list[str],
) -> None:
    await money.deposit(1, 1_000)
    before = await snapshot(redis_client)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] == b"invalid_argument"
    assert await snapshot(redis_client) == before


async def test_dead_letter_moves_and_acknowledges_atomically(
    redis_client: RedisClient, money: MoneyScripts, users: tuple[int, int]
) -> None:
    await money.deposit(1, 5)
    stream, group = keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP
    await redis_client.xgroup_create(stream, group, id="0")
    delivered = cast(
        list[tuple[bytes, list[tuple[bytes, object]]]],
        await redis_client.xreadgroup(group, "w", {stream: ">"}),
    )
    entry_id = delivered[0][1][0][0].decode()
    script = load_script_source("dead_letter")
    keys = [stream, keyspace.txn_dead_letter(BUCKET)]
    before = await snapshot(redis_client)
    for args in ([group, entry_id, "reason"], [group, "not-an-id", "reason", "x"]):
        assert await redis_client.eval(script, 2, *keys, *args) == b"invalid_argument"
    assert await snapshot(redis_client) == before
    assert await redis_client.eval(script, 2, *keys, group, entry_id, "reason", "bad") == 1
    assert cast(dict[str, int], await redis_client.xpending(stream, group))["pending"] == 0
    letters = cast(StreamEntries, await redis_client.xrange(keyspace.txn_dead_letter(BUCKET)))
    assert [fields for _, fields in letters] == [{b"reason": b"bad"}]


def session_json(user_id: int, created: float) -> str:
    return json.dumps({"created": int(created), "session": {"user_id": user_id, "username": "u"}})


async def test_money_scripts_check_the_session_first(
    redis_client: RedisClient, money: MoneyScripts, users: tuple[int, int]
) -> None:
    await money.deposit(1, 1_000)
    live = SessionCheck("wallet_session:{b0}:live", absolute_timeout_s=3600, idle_timeout_s=600)
    await redis_client.set(live.redis_key, session_json(1, time.time()), ex=5)
    accepted = await money.transfer(1, 2, 10, "k1", session=live)
    assert accepted.txn_id == 2
    assert 590 <= await redis_client.ttl(live.redis_key) <= 600  # the idle TTL given back
    await money.deposit(1, 10, session=live)

    before = await snapshot(redis_client)
    refused = [
        SessionCheck("wallet_session:{b0}:gone", 3600, 600),
        SessionCheck("wallet_session:{b0}:bob", 3600, 600),
        SessionCheck("wallet_session:{b0}:old", 3600, 600),
        SessionCheck("wallet_session:{b0}:junk", 3600, 600),
    ]
    await redis_client.set("wallet_session:{b0}:bob", session_json(2, time.time()))
    await redis_client.set("wallet_session:{b0}:old", session_json(1, time.time() - 3601))
    await redis_client.set("wallet_session:{b0}:junk", "not json")
    before = await snapshot(redis_client)
    for session in refused:
        with refusing(refusals.SESSION_ENDED):
            await money.transfer(1, 2, 10, "k2", session=session)
        with refusing(refusals.SESSION_ENDED):
            await money.deposit(1, 10, "k3", session=session)
        # Checked before the idempotency record: a replay needs a live session too.
        with refusing(refusals.SESSION_ENDED):
            await money.transfer(1, 2, 10, "k1", session=session)
    assert await snapshot(redis_client) == before


async def test_money_scripts_refuse_a_malformed_session_key(
    redis_client: RedisClient, money: MoneyScripts, users: tuple[int, int]
) -> None:
    keys = [*DEPOSIT_KEYS, "not_a_session"]
    args = ["1", "5", "", "86400", "1", "60", "60", *OUTCOME]
    reply = await redis_client.eval(load_script_source("deposit"), len(keys), *keys, *args)
    assert reply[0] == b"invalid_argument"


async def refund_login(redis_client: RedisClient, keys: list[str], address: str) -> int:
    """refund_login_attempt on the username's keys and login_address_give_back on the
    address's, as LoginThrottle.not_checked calls them; the username's answer."""
    await redis_client.eval(load_script_source("login_address_give_back"), 1, keys[0], "0")
    user = load_script_source("refund_login_attempt")
    return cast(int, await redis_client.eval(user, 2, *keys[1:], address))


async def test_refund_login_attempt_never_creates_a_counter(redis_client: RedisClient) -> None:
    keys = [
        keyspace.login_failures_of_address("10.0.0.1"),
        keyspace.login_failures_of_user_at_address("alice", "10.0.0.1"),
        keyspace.login_failing_addresses_of_user("alice"),
    ]
    await redis_client.set(keys[0], 3, ex=900)
    await redis_client.hset(keys[1], mapping={"attempts": 2, "failures": 1, "next_at_ms": 5})
    await redis_client.expire(keys[1], 900)
    await redis_client.sadd(keys[2], "10.0.0.1")
    assert await refund_login(redis_client, keys, "10.0.0.1") == 1
    assert await redis_client.get(keys[0]) == b"2"
    assert await redis_client.ttl(keys[0]) > 0
    assert await redis_client.hgetall(keys[1]) == {
        b"attempts": b"1",
        b"failures": b"1",
        b"next_at_ms": b"5",
    }
    assert await refund_login(redis_client, keys, "10.0.0.1") == 0
    assert not await redis_client.exists(keys[1], keys[2])
    # Nothing left to give back: nothing is created.
    assert await refund_login(redis_client, keys, "10.0.0.1") == 0
    assert await refund_login(redis_client, keys, "10.0.0.1") == 0
    assert await redis_client.get(keys[0]) == b"0"
    assert not await redis_client.exists(keys[1], keys[2])
    await redis_client.delete(keys[0])
    assert await refund_login(redis_client, keys, "10.0.0.1") == 0
    assert not await redis_client.exists(*keys)


async def test_login_address_attempt_counts_until_its_limit_then_writes_nothing(
    redis_client: RedisClient,
) -> None:
    attempt = load_script_source("login_address_attempt")
    give_back = load_script_source("login_address_give_back")
    key = keyspace.login_failures_of_address("10.0.0.1")
    assert [await redis_client.eval(attempt, 1, key, "900000", "2") for _ in range(2)] == [0, 0]
    assert 0 < await redis_client.pttl(key) <= 900_000
    before = await snapshot(redis_client)
    assert 890_000 < await redis_client.eval(attempt, 1, key, "900000", "2") <= 900_000
    assert await snapshot(redis_client) == before
    # An attempt the username's limits refused leaves nothing: a count back at zero goes.
    assert await redis_client.eval(give_back, 1, key, "1") == 1
    assert await redis_client.eval(give_back, 1, key, "1") == 0
    assert not await redis_client.exists(key)
    assert await redis_client.eval(give_back, 1, key, "1") == 0
    assert not await redis_client.exists(key)


async def test_login_attempt_told_the_address_refused_counts_nothing(
    redis_client: RedisClient,
) -> None:
    """The longest wait of the address's and the username's, as the single script gave."""
    script = load_script_source("login_attempt")
    keys = [
        keyspace.login_failures_of_user_at_address("alice", "10.0.0.1"),
        keyspace.login_failing_addresses_of_user("alice"),
        keyspace.login_lock_of_user("alice"),
    ]
    limits = ["900000", "10", "10", "300000", "3600000"]
    assert await redis_client.eval(script, 3, *keys, "10.0.0.1", "5000", *limits) == 5000
    assert await redis_client.keys("throttle:*") == []
    await redis_client.set(keys[2], int(time.time() * 1000) + 60_000, px=60_000)
    before = await snapshot(redis_client)
    wait_ms = await redis_client.eval(script, 3, *keys, "10.0.0.1", "5000", *limits)
    assert 55_000 < wait_ms <= 60_000
    assert await redis_client.eval(script, 3, *keys, "10.0.0.1", "90000", *limits) == 90_000
    assert await snapshot(redis_client) == before
    await redis_client.delete(keys[2])
    assert await redis_client.eval(script, 3, *keys, "10.0.0.1", "0", *limits) == 0
    assert await redis_client.hget(keys[0], "attempts") == b"1"
    assert await redis_client.smembers(keys[1]) == {b"10.0.0.1"}


async def test_login_failed_sets_a_doubling_wait_and_never_creates_a_counter(
    redis_client: RedisClient,
) -> None:
    script = load_script_source("login_failed")
    key = keyspace.login_failures_of_user_at_address("alice", "10.0.0.1")
    assert await redis_client.eval(script, 1, key, "3", "1000", "60000") == 0
    assert not await redis_client.exists(key)
    await redis_client.hset(key, "attempts", 10)
    await redis_client.expire(key, 900)
    waits_ms = [await redis_client.eval(script, 1, key, "3", "1000", "60000") for _ in range(10)]
    assert waits_ms == [0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000]
    assert await redis_client.hget(key, "failures") == b"10"
    assert 0 < await redis_client.ttl(key) <= 900


@pytest.mark.parametrize("script", ["login_attempt", "login_succeeded", "refund_login_attempt"])
async def test_login_scripts_refuse_keys_of_another_username_or_address(
    redis_client: RedisClient, script: str
) -> None:
    source = load_script_source(script)
    keys = [
        keyspace.login_failures_of_user_at_address("alice", "10.0.0.2"),
        keyspace.login_failing_addresses_of_user("alice"),
        keyspace.login_lock_of_user("alice"),
    ][: 3 if script == "login_attempt" else 2]
    args = ["10.0.0.1", *(["1"] * 6 if script == "login_attempt" else [])]
    with pytest.raises(ResponseError, match="one username and address"):
        await redis_client.eval(source, len(keys), *keys, *args)
    with pytest.raises(ResponseError, match="one username and address"):
        await redis_client.eval(source, 1, "user:{1}", *args)
    if script == "login_attempt":  # the lock of another username
        keys = [*keys[:2], keyspace.login_lock_of_user("bob")]
        keys[0] = keyspace.login_failures_of_user_at_address("alice", "10.0.0.1")
        with pytest.raises(ResponseError, match="one username and address"):
            await redis_client.eval(source, 3, *keys, *args)
    assert await redis_client.keys("throttle:*") == []


@pytest.mark.parametrize("script", ["login_address_attempt", "login_address_give_back"])
async def test_login_address_scripts_refuse_any_other_key(
    redis_client: RedisClient, script: str
) -> None:
    source = load_script_source(script)
    args = ["900000", "10"] if script == "login_address_attempt" else ["1"]
    for key in (keyspace.login_lock_of_user("alice"), "user:{1}"):
        with pytest.raises(ResponseError, match="one address key"):
            await redis_client.eval(source, 1, key, *args)
    assert await redis_client.keys("throttle:*") == []


async def test_a_counter_never_leaves_its_epoch(
    redis_client: RedisClient, money: MoneyScripts, users: tuple[int, int]
) -> None:
    """The next epoch's ids may be another counter's (one started after Redis was lost)."""
    await money.deposit(1, 100)
    await redis_client.set(keyspace.txn_seq(BUCKET), TXN_IDS_PER_EPOCH - 2)
    assert (await money.deposit(1, 5)).txn_id == TXN_IDS_PER_EPOCH - 1  # the epoch's last
    before = await snapshot(redis_client)
    with refusing(refusals.EPOCH_EXHAUSTED):
        await money.deposit(1, 5, "k")
    with refusing(refusals.EPOCH_EXHAUSTED):
        await money.transfer(1, 2, 5, "k")
    assert await snapshot(redis_client) == before


async def test_no_money_moves_while_redis_has_not_been_rebuilt(
    redis_client: RedisClient, money: MoneyScripts, users: tuple[int, int]
) -> None:
    await money.deposit(1, 100)
    # Redis lost its data (a wallet was given again at login), the counter went with it.
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    before = await snapshot(redis_client)
    with refusing(refusals.NOT_REBUILT):
        await money.deposit(1, 5, "k")
    with refusing(refusals.NOT_REBUILT):
        await money.transfer(1, 2, 5, "k")
    assert await snapshot(redis_client) == before


async def test_many_calls_in_one_round_trip_survive_a_script_flush_after_the_load(
    redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = LuaScript(redis_client, "register_user")
    real_load = LuaScript.load
    flushes = 0

    async def load_then_flush_once(self: LuaScript) -> None:
        nonlocal flushes
        await real_load(self)
        if not flushes:
            flushes += 1
            await redis_client.script_flush()  # as a Redis restart between load and call

    monkeypatch.setattr(LuaScript, "load", load_then_flush_once)
    calls = [([keyspace.user(user_id)], [str(user_id)]) for user_id in (1, 2, 3)]
    replies = await script.call_many(calls)
    assert [reply[0] for reply in replies] == [b"created"] * 3
    assert flushes == 1
    assert await balance(redis_client, 2) == 0


async def test_fixed_window_limit_counts_up_to_the_limit_then_writes_nothing(
    redis_client: RedisClient,
) -> None:
    script = load_script_source("fixed_window_limit")
    key = keyspace.sign_ups_of_address("10.0.0.1")
    assert await redis_client.eval(script, 1, key, "2", "60000", "look") == 0
    assert not await redis_client.exists(key)
    assert await redis_client.eval(script, 1, key, "2", "60000", "count") == 0
    assert await redis_client.eval(script, 1, key, "2", "60000", "count") == 0
    assert await redis_client.get(key) == b"2"
    for mode in ("count", "look"):
        wait_ms = await redis_client.eval(script, 1, key, "2", "60000", mode)
        assert 59_000 < wait_ms <= 60_000
    assert await redis_client.get(key) == b"2"
    assert 0 < await redis_client.pttl(key) <= 60_000
    with pytest.raises(ResponseError, match="fixed_window_limit"):
        await redis_client.eval(script, 1, "user:{1}", "2", "60000", "count")
    with pytest.raises(ResponseError, match="fixed_window_limit"):
        await redis_client.eval(script, 1, key, "0", "60000", "count")
