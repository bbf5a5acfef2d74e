"""Transfers across buckets (service/redis/crossing.py and its scripts) against a real Redis,
with three buckets (user u in bucket u % 3): exactly once, fenced, recovered, and money
conserved, counting what is in transit, at every step."""

import asyncio
import random
import signal
import sys
import time
from dataclasses import replace
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_records
from service.domain import refusals
from service.domain.postings import Posting
from service.domain.records import record_from_stream_fields
from service.domain.refusals import Refused
from service.domain.times import us_from_datetime
from service.ledger.crossing_totals import UnevenSide
from service.ledger.history import Direction, read_history
from service.ledger.hold_sweeper import run_crossing_recovery
from service.ledger.hold_totals import last_stream_entry_id, parse_entry_id
from service.ledger.id_counter import restart_counter_set_aside
from service.ledger.rebuild import rebuild
from service.ledger.rebuild_errors import RebuildRefused
from service.ledger.reconcile import TransitDrift, reconcile
from service.ledger.reconcile import format_report as format_reconcile
from service.ledger.statements import Statement, balance_at, read_statement
from service.redis import crossing, keyspace
from service.redis import money as money_module
from service.redis.crossing import CrossingLegs, Reservation
from service.redis.money import MoneyScripts
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from tests.support.crossing import (
    DEPOSIT_KOPECKS,
    USERS,
    assert_conserved,
    assert_reconciled,
    assert_settled_down,
    in_flight,
    in_transit,
    incoming,
    losing_redis_after_reservations,
    reservation_of,
    reserved_only,
    stream_kinds,
    voided_transfer,
)
from tests.support.helpers import (
    StreamEntries,
    balance,
    lose_redis,
    persist,
    refusing,
)

FAR_FUTURE_US = int(time.time() * 1_000_000) + 10 * 24 * 3600 * 1_000_000


async def test_a_transfer_across_buckets_moves_the_money_once(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    accepted = await funded.transfer(1, 2, 2_500, idempotency_key="k")
    assert await balance(redis_client, 1) == DEPOSIT_KOPECKS - 2_500
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 2_500
    assert (await in_transit(redis_client), await incoming(redis_client, 2)) == (0, 0)
    # The id is the payer's bucket's; each bucket's stream records its side.
    seq_1 = int(await redis_client.get(keyspace.txn_seq(1)) or 0)
    assert accepted.txn_id == seq_1
    assert (await stream_kinds(redis_client, 1))[-2:] == ["transfer_out", "transfer_settled"]
    assert (await stream_kinds(redis_client, 2))[-1] == "transfer_in"
    assert (await reservation_of(redis_client, 1, accepted.txn_id)).state == "settled"
    assert await redis_client.zcard(keyspace.outbound_due(1)) == 0
    assert await redis_client.zcard(keyspace.inbound_due(2)) == 0

    again = await funded.transfer(1, 2, 2_500, idempotency_key="k")
    assert (again.txn_id, again.replayed) == (accepted.txn_id, True)
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 2_500
    assert await incoming(redis_client, 2) == 0  # the retry's own expectation was aborted
    await assert_conserved(redis_client)


async def test_refusals_across_buckets_change_no_money_and_release_the_headroom(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await funded.transfer(1, 2, DEPOSIT_KOPECKS + 1, idempotency_key="big")
    with refusing(refusals.INSUFFICIENT_FUNDS) as replay:
        await funded.transfer(1, 2, DEPOSIT_KOPECKS + 1, idempotency_key="big")
    assert replay.value.replayed
    with refusing(refusals.RECIPIENT_NOT_FOUND):
        await funded.transfer(1, 11, 1)  # user 11 (bucket 2) has no wallet
    await redis_client.hset(keyspace.user(5), "balance_kopecks", 10**15 - 10)
    with refusing(refusals.BALANCE_LIMIT_EXCEEDED):
        await funded.transfer(4, 5, 11)
    await redis_client.hset(keyspace.user(5), "balance_kopecks", DEPOSIT_KOPECKS)
    assert [await incoming(redis_client, u) for u in (2, 5)] == [0, 0]
    assert await in_transit(redis_client) == 0
    assert [await balance(redis_client, u) for u in USERS] == [DEPOSIT_KOPECKS] * len(USERS)
    assert await redis_client.zcard(keyspace.inbound_due(2)) == 0


async def test_a_crash_between_the_legs_is_completed_by_recovery(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reservation is made, then Redis stops answering (or the API dies) before the
    credit: the client gets outcome_unknown; recovery completes the transfer after its
    deadline, and a retry with the key replays it."""

    await reserved_only(redis_client, funded, monkeypatch, 4, 8, 700, idempotency_key="half")
    assert await balance(redis_client, 4) == DEPOSIT_KOPECKS - 700
    assert await balance(redis_client, 8) == DEPOSIT_KOPECKS
    assert (await in_transit(redis_client), await incoming(redis_client, 8)) == (700, 700)
    await assert_conserved(redis_client)

    legs = CrossingLegs(redis_client)
    assert await legs.recover(now_us=int(time.time() * 1_000_000)) == 0  # not due yet
    assert await legs.recover(now_us=FAR_FUTURE_US) == 1
    assert await balance(redis_client, 8) == DEPOSIT_KOPECKS + 700
    assert (await in_transit(redis_client), await incoming(redis_client, 8)) == (0, 0)
    await assert_conserved(redis_client)
    again = await funded.transfer(4, 8, 700, idempotency_key="half")
    assert again.replayed
    assert await balance(redis_client, 8) == DEPOSIT_KOPECKS + 700


async def test_a_retry_with_the_key_completes_a_reservation_left_half_way(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    await reserved_only(redis_client, funded, monkeypatch, 7, 2, 300, idempotency_key="retry")
    again = await funded.transfer(7, 2, 300, idempotency_key="retry")
    assert again.replayed
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 300
    assert (await in_transit(redis_client), await incoming(redis_client, 2)) == (0, 0)
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 0


async def test_the_fence_voids_a_reservation_and_stops_a_late_credit(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery aborted the credit (the API stalled past the deadline): the reservation is
    voided, the money is back, the key forgotten, and the credit the API sends late does
    nothing."""
    legs = CrossingLegs(redis_client)
    seen: list[int] = []

    async def stalled(self: CrossingLegs, reservation: Reservation) -> str:
        seen.append(reservation.txn_id)
        assert await self.abort(reservation.to_user_id, reservation.token) is None  # the fence
        return await original(self, reservation)

    original = CrossingLegs.finish
    with monkeypatch.context() as patch:
        patch.setattr(CrossingLegs, "finish", stalled)
        with refusing(refusals.TRANSFER_UNDONE):
            await funded.transfer(1, 5, 900, idempotency_key="late")
    [txn_id] = seen
    assert await balance(redis_client, 1) == DEPOSIT_KOPECKS
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS
    assert (await in_transit(redis_client), await incoming(redis_client, 5)) == (0, 0)
    assert not await redis_client.exists(keyspace.idempotency(1, "late"))
    assert (await stream_kinds(redis_client, 1))[-2:] == ["transfer_out", "transfer_voided"]

    reservation = await reservation_of(redis_client, 1, txn_id)
    assert reservation.state == "voided"
    assert await legs._apply_credit(reservation) == "aborted"  # the late credit: fenced off
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS
    assert await legs.complete(1, txn_id) == "voided"
    # The key is free again: a retry is a new transfer.
    fresh = await funded.transfer(1, 5, 900, idempotency_key="late")
    assert not fresh.replayed
    assert fresh.txn_id != txn_id
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 900
    await assert_conserved(redis_client)


async def test_recovery_aborts_an_expectation_no_reservation_followed(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    legs = CrossingLegs(redis_client)
    token = "t" * 22
    assert await legs.expect(1, 2, 400, token) == "expected"  # then the API died
    assert await incoming(redis_client, 2) == 400
    assert await legs.recover(now_us=int(time.time() * 1_000_000)) == 0
    assert await legs.recover(now_us=FAR_FUTURE_US) == 1
    assert await incoming(redis_client, 2) == 0
    assert await redis_client.hget(keyspace.inbound(2, token), "state") == b"aborted"
    assert await redis_client.ttl(keyspace.inbound(2, token)) > 0


async def test_recovery_never_fences_off_a_reservation_that_was_made(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expectation due while its reservation is put off (its buckets were unreachable at
    its turn): the payer's bucket says its request reserved, so the expectation waits, and
    the transfer completes once the reservation's turn comes, rather than being voided."""
    reserved = await reserved_only(redis_client, funded, monkeypatch, 4, 5, 70)
    now_us = int(time.time() * 1_000_000) + crossing.EXPECTATION_DEADLINE_MS * 1000 + 1
    put_off = {str(reserved.txn_id): now_us + 10**9}
    await redis_client.zadd(keyspace.outbound_due(1), put_off, xx=True)
    legs = CrossingLegs(redis_client)
    assert await legs.recover(now_us) == 0
    assert await redis_client.hget(keyspace.inbound(5, reserved.token), "state") == b"expected"
    assert await legs.recover(FAR_FUTURE_US) == 1
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 70
    await assert_conserved(redis_client)


async def test_a_reservation_after_its_expectation_was_fenced_off_is_not_applied(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request slower than the expectation's deadline: recovery made its "not applied"
    final on the payer's bucket before aborting the expectation, so the reservation that
    arrives then is refused as not applied (503, nothing done), and no money moves."""
    expect = CrossingLegs.expect

    async def slow(self: CrossingLegs, *args: Any, **kwargs: Any) -> str:
        verdict = await expect(self, *args, **kwargs)
        assert await self.recover(FAR_FUTURE_US) == 1  # the API stalled past the deadline
        return verdict

    monkeypatch.setattr(CrossingLegs, "expect", slow)
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await funded.transfer(4, 5, 70)
    assert [await balance(redis_client, u) for u in (4, 5)] == [DEPOSIT_KOPECKS] * 2
    assert await incoming(redis_client, 5) == 0
    assert await in_transit(redis_client) == 0


async def test_concurrent_transfers_across_and_within_buckets(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    """The contract's concurrent cases with payers and payees in every bucket: no kopeck
    lost or invented, no balance below zero, every 201 applied once."""
    rng = random.Random(16)
    accepted: list[int] = []
    refused: list[refusals.Refusal] = []

    async def payer(user_id: int) -> None:
        for _ in range(25):
            to_user_id = rng.choice([u for u in USERS if u != user_id])
            try:
                result = await funded.transfer(user_id, to_user_id, rng.randint(1, 20_000))
            except Refused as refusal:
                refused.append(refusal.refusal)
            else:
                accepted.append(result.txn_id)

    await asyncio.gather(*(payer(u) for u in USERS))
    assert len(accepted) == len(set(accepted)) > 100
    assert set(refused) <= {refusals.INSUFFICIENT_FUNDS}
    await assert_settled_down(redis_client)


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        # Each call has the script's arity and one fault: an amount of 0; another payee's
        # record; a payer who is the payee.
        ("transfer_expect", ["user:{b2}:2", "inbound:{b2}:2:" + "t" * 22, "inbound:due:{b2}"],
         ["2", "0", "t" * 22, "1000", "1", "t" * 22, "0"]),
        ("transfer_expect", ["user:{b2}:2", "inbound:{b2}:5:" + "t" * 22, "inbound:due:{b2}"],
         ["2", "5", "t" * 22, "1000", "1", "t" * 22, "0"]),
        ("transfer_expect", ["user:{b2}:2", "inbound:{b2}:2:" + "t" * 22, "inbound:due:{b2}"],
         ["2", "5", "t" * 22, "1000", "2", "t" * 22, "0"]),
        # A payer who is the payee; a refund_of that is no id.
        ("transfer_credit", ["txn:stream:{b2}", "user:{b2}:2", "inbound:{b2}:2:" + "t" * 22,
                             "inbound:due:{b2}", "txn:clock:{b2}"],
         ["2", "t" * 22, "7", "2", "5", "60", "", ""]),
        ("transfer_credit", ["txn:stream:{b2}", "user:{b2}:2", "inbound:{b2}:2:" + "t" * 22,
                             "inbound:due:{b2}", "txn:clock:{b2}"],
         ["2", "t" * 22, "7", "1", "5", "60", "x", ""]),
        ("transfer_abort", ["user:{b2}:2", "inbound:{b2}:3:" + "t" * 22, "inbound:due:{b2}"],
         ["2", "t" * 22, "60", "0"]),
        # Another reservation's record; a request's record kept for 0 s.
        ("transfer_settle", ["txn:stream:{b1}", "outbound:{b1}:8", "outbound:due:{b1}",
                             "transit:{b1}", "req:{b1}:1:" + "t" * 22], ["7", "60", "60"]),
        ("transfer_settle", ["txn:stream:{b1}", "outbound:{b1}:7", "outbound:due:{b1}",
                             "transit:{b1}", "req:{b1}:1:" + "t" * 22], ["7", "60", "0"]),
        # The counter where the clock goes.
        ("transfer_void", ["txn:stream:{b1}", "outbound:{b1}:7", "outbound:due:{b1}",
                           "transit:{b1}", "user:{b1}:1", "txn:seq:{b1}",
                           "req:{b1}:1:" + "t" * 22], ["7", "60", "60"]),
        # A payer who is the payee; then keys of another reservation's; another payer's
        # wallet; another request's record; a refund_of that is no id.
        ("restore_reservation", ["outbound:{b1}:7", "outbound:due:{b1}", "user:{b1}:1",
                                 "req:{b1}:1:" + "t" * 22],
         ["7", "1", "1", "5", "t" * 22, "1", "0", "", "1", "", "t" * 22, ""]),
        ("restore_reservation", ["outbound:{b1}:8", "outbound:due:{b1}", "user:{b1}:1",
                                 "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "0", "", "1", "", "t" * 22, ""]),
        ("restore_reservation", ["outbound:{b1}:7", "outbound:due:{b1}", "user:{b1}:4",
                                 "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "0", "", "1", "", "t" * 22, ""]),
        ("restore_reservation", ["outbound:{b1}:7", "outbound:due:{b1}", "user:{b1}:1",
                                 "req:{b1}:1:" + "u" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "0", "", "1", "", "t" * 22, ""]),
        ("restore_reservation", ["outbound:{b1}:7", "outbound:due:{b1}", "user:{b1}:1",
                                 "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "0", "", "1", "0", "t" * 22, ""]),
        # A capture's reservation that names a refund too.
        ("restore_reservation", ["outbound:{b1}:7", "outbound:due:{b1}", "user:{b1}:1",
                                 "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "0", "", "1", "3", "t" * 22, "9"]),
        ("restore_lost_reservation", ["txn:stream:{b1}", "outbound:{b1}:7", "outbound:due:{b1}",
                                      "transit:{b1}", "user:{b1}:4", "txn:clock:{b1}",
                                      "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "", ""]),
        ("restore_lost_reservation", ["txn:stream:{b1}", "outbound:{b1}:7", "outbound:due:{b1}",
                                      "transit:{b1}", "user:{b1}:1", "txn:clock:{b1}",
                                      "req:{b1}:1:" + "t" * 22],
         ["7", "1", "2", "5", "t" * 22, "1", "", "x"]),
        ("restore_credit", ["inbound:{b2}:2:" + "t" * 22], ["2", "t" * 21, "7", "5", "1", "60"]),
        ("restore_credit", ["inbound:{b2}:2:" + "t" * 22], ["2", "t" * 22, "7", "0", "1", "60"]),
    ],
)  # fmt: skip
async def test_the_scripts_refuse_malformed_calls_and_write_nothing(
    redis_client: RedisClient, funded: MoneyScripts, script: str, keys: list[str], args: list[str]
) -> None:
    before = {key: await redis_client.dump(key) for key in keys}
    reply = await LuaScript(redis_client, script)(keys=keys, args=args)
    assert reply[0] == b"invalid_argument"
    assert {key: await redis_client.dump(key) for key in keys} == before


def test_recovery_completes_before_it_aborts() -> None:
    """An expectation outlives its reservation's deadline, so that recovery of the
    reservation completes the transfer rather than finds it fenced off."""
    assert crossing.EXPECTATION_DEADLINE_MS > crossing.RESERVATION_DEADLINE_MS


async def test_the_recovery_loop_completes_a_transfer_once_its_deadline_passed(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `wallet writer` runs it (service/ledger/hold_sweeper.py), with a deadline of 1 ms."""
    monkeypatch.setattr(money_module, "RESERVATION_DEADLINE_MS", 1)

    await reserved_only(redis_client, funded, monkeypatch, 1, 8, 600)
    stop = asyncio.Event()
    recovery = asyncio.create_task(run_crossing_recovery(CrossingLegs(redis_client), stop))
    try:
        for _ in range(500):
            if not await in_transit(redis_client):
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await recovery
    assert await balance(redis_client, 8) == DEPOSIT_KOPECKS + 600
    assert await incoming(redis_client, 8) == 0
    await assert_conserved(redis_client)


async def test_a_crash_between_the_credit_and_the_settle(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payee has the money, the reservation is not settled yet: nothing is in flight,
    and a retry with the key (or recovery) settles it without crediting twice."""
    original = CrossingLegs._end

    async def settle_lost(
        self: CrossingLegs, script: LuaScript, state: str, *args: object, **kwargs: object
    ) -> str:
        if state == "settled":
            raise RedisConnectionError("lost before the settle")
        return await original(self, script, state, *args, **kwargs)  # type: ignore[arg-type]

    for key in ("one", "two"):
        with monkeypatch.context() as patch:
            patch.setattr(CrossingLegs, "_end", settle_lost)
            with refusing(refusals.OUTCOME_UNKNOWN):
                await funded.transfer(4, 2, 100, idempotency_key=key)
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 200
    assert (await in_transit(redis_client), await in_flight(redis_client)) == (200, 0)
    await assert_conserved(redis_client)

    again = await funded.transfer(4, 2, 100, idempotency_key="one")  # the retry settles it
    assert again.replayed
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 1  # and "two"
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 200
    assert await in_transit(redis_client) == 0
    assert (await stream_kinds(redis_client, 2)).count("transfer_in") == 2
    await assert_conserved(redis_client)


async def test_an_abort_after_the_credit_leaves_it_applied(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    legs = CrossingLegs(redis_client)
    accepted = await funded.transfer(7, 5, 40)
    reservation = await reservation_of(redis_client, 1, accepted.txn_id)
    assert await legs.abort(5, reservation.token) == accepted.txn_id
    assert await redis_client.hget(keyspace.inbound(5, reservation.token), "state") == b"applied"
    assert await balance(redis_client, 5) == DEPOSIT_KOPECKS + 40


async def test_concurrent_requests_with_one_key_move_the_money_once(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    results = await asyncio.gather(
        *(funded.transfer(1, 8, 1_000, idempotency_key="same") for _ in range(8))
    )
    assert len({r.txn_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await balance(redis_client, 8) == DEPOSIT_KOPECKS + 1_000
    assert (await in_transit(redis_client), await incoming(redis_client, 8)) == (0, 0)
    await assert_conserved(redis_client)


async def test_a_reservation_whose_credit_record_is_gone_after_long_is_left_alone(
    redis_client: RedisClient,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its credit may have been applied and its record expired: a void could pay twice."""

    reservation = await reserved_only(redis_client, funded, monkeypatch, 1, 2, 50)
    # As after its record ended and expired: the credit removed it from the due set then.
    await redis_client.delete(keyspace.inbound(2, reservation.token))
    await redis_client.zrem(keyspace.inbound_due(2), f"2:{reservation.token}")
    await redis_client.hset(keyspace.outbound(1, reservation.txn_id), "created_at_us", 1)
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 0
    assert "its credit's record is gone" in caplog.text
    assert await reservation_of(redis_client, 1, reservation.txn_id) == replace(
        reservation, created_at_us=1
    )
    assert await balance(redis_client, 1) == DEPOSIT_KOPECKS - 50


async def test_a_void_refuses_keys_that_are_not_its_reservations(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    reservation = await reserved_only(
        redis_client, funded, monkeypatch, 1, 2, 50, idempotency_key="mine"
    )
    txn_id = reservation.txn_id
    head = [
        keyspace.txn_stream(1),
        keyspace.outbound(1, txn_id),
        keyspace.outbound_due(1),
        keyspace.transit(1),
    ]
    void = LuaScript(redis_client, "transfer_void")
    for keys in (
        [*head, keyspace.user(4), keyspace.txn_clock(1), keyspace.idempotency(1, "mine")],
        [*head, keyspace.user(1), keyspace.txn_clock(1), keyspace.idempotency(1, "other")],
        [*head, keyspace.user(1), keyspace.txn_clock(1)],
    ):
        before = {key: await redis_client.dump(key) for key in keys}
        assert (await void(keys=keys, args=[str(txn_id), "60"]))[0] == b"invalid_argument"
        assert {key: await redis_client.dump(key) for key in keys} == before


# The API's process, killed (SIGKILL) between the legs: it reserves, says so, and waits.
_KILLED_BETWEEN_THE_LEGS = """
import asyncio, sys
from service.redis import crossing, keyspace, money
from service.redis.client import connect_redis
from service.settings import Settings

async def main() -> None:
    redis = connect_redis(Settings(redis_url=sys.argv[1]))
    keyspace.use_buckets(int(sys.argv[2]))
    money.RESERVATION_DEADLINE_MS = 1  # due at once: the test need not wait a minute

    async def stop_here(self: crossing.CrossingLegs, reservation: crossing.Reservation) -> str:
        print(reservation.txn_id, flush=True)
        await asyncio.sleep(3600)
        raise AssertionError("not killed")

    crossing.CrossingLegs.finish = stop_here
    await money.MoneyScripts(redis, Settings(redis_url=sys.argv[1])).transfer(
        4, 2, 800, idempotency_key="killed"
    )

asyncio.run(main())
"""


async def test_the_api_killed_between_the_legs_is_completed_by_recovery(
    redis_client: RedisClient, funded: MoneyScripts, redis_url: str, several_buckets: int
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_BETWEEN_THE_LEGS,
        redis_url,
        str(several_buckets),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    async with asyncio.timeout(30):
        txn_id = int(await child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert await balance(redis_client, 4) == DEPOSIT_KOPECKS - 800
    assert (await in_flight(redis_client), await incoming(redis_client, 2)) == (800, 800)
    await assert_conserved(redis_client)

    assert await CrossingLegs(redis_client).recover(now_us=int(time.time() * 1_000_000)) == 1
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 800
    assert (await in_transit(redis_client), await incoming(redis_client, 2)) == (0, 0)
    await assert_conserved(redis_client)
    replayed = await funded.transfer(4, 2, 800, idempotency_key="killed")
    assert (replayed.txn_id, replayed.replayed) == (txn_id, True)


async def test_recovery_completes_whatever_order_the_buckets_come_in(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payer in bucket 2, payee in bucket 0, both entries due: the reservation is ended
    before the expectation could be aborted, so the transfer completes."""
    await reserved_only(redis_client, funded, monkeypatch, 5, 3, 100)
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 1
    assert await balance(redis_client, 3) == DEPOSIT_KOPECKS + 100
    assert await in_transit(redis_client) == 0
    await assert_conserved(redis_client)


async def test_a_young_reservation_whose_expectation_is_gone_is_voided(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after a failover of the payee's bucket that lost the expectation: the tombstone
    is written, then the money goes back to the payer."""
    reservation = await reserved_only(
        redis_client, funded, monkeypatch, 1, 2, 70, idempotency_key="lost"
    )
    await redis_client.delete(keyspace.inbound(2, reservation.token))
    await redis_client.zrem(keyspace.inbound_due(2), f"2:{reservation.token}")
    await redis_client.hset(keyspace.user(2), "incoming_kopecks", 0)  # lost with it
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 1
    assert await balance(redis_client, 1) == DEPOSIT_KOPECKS
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS
    assert await redis_client.hget(keyspace.inbound(2, reservation.token), "state") == b"aborted"
    assert (await stream_kinds(redis_client, 1))[-1] == "transfer_voided"
    await assert_conserved(redis_client)


async def test_recovery_goes_on_past_entries_it_cannot_end(
    redis_client: RedisClient, funded: MoneyScripts, caplog: pytest.LogCaptureFixture
) -> None:
    """A due reservation with no record is dropped; a malformed expectation is put back an
    hour later, logged at CRITICAL; the entries behind them are ended."""
    legs = CrossingLegs(redis_client)
    await redis_client.zadd(keyspace.outbound_due(1), {"999": 0})
    await redis_client.zadd(keyspace.inbound_due(2), {"x:bad": 0})
    token = "t" * 22
    assert await legs.expect(1, 2, 400, token) == "expected"
    assert await legs.recover(now_us=FAR_FUTURE_US) == 1
    assert await incoming(redis_client, 2) == 0
    assert await redis_client.zscore(keyspace.outbound_due(1), "999") is None
    later = await redis_client.zscore(keyspace.inbound_due(2), "x:bad")
    assert later == FAR_FUTURE_US + crossing.RECOVERY_FAULT_RETRY_S * 1_000_000
    assert "recovery cannot end b'x:bad'" in caplog.text


async def test_a_retried_credit_writes_so_its_wait_for_the_replicas_covers_it(
    redis_client: RedisClient, funded: MoneyScripts
) -> None:
    legs = CrossingLegs(redis_client)
    accepted = await funded.transfer(1, 2, 10)
    reservation = await reservation_of(redis_client, 1, accepted.txn_id)
    await redis_client.expire(keyspace.inbound(2, reservation.token), 5)
    assert await legs._apply_credit(reservation) == "applied"
    assert await redis_client.ttl(keyspace.inbound(2, reservation.token)) > 3600
    assert await balance(redis_client, 2) == DEPOSIT_KOPECKS + 10


async def test_the_writers_store_each_side_once(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each bucket's writer stores its own side: the reservation and its end from the
    payer's stream, the credit from the payee's; again and again, once."""
    settled = await funded.transfer(1, 2, 300, idempotency_key="paid")
    # Fenced off, then voided.
    voided = await voided_transfer(redis_client, funded, monkeypatch)

    assert await persist(redis_client, db_engine) == len(USERS) + 5
    async with db_engine.connect() as connection:
        reservations = (
            await connection.execute(text("SELECT id, from_user_id, to_user_id, amount_kopecks,"
                                          " from_balance_after_kopecks, idempotency_key"
                                          " FROM transfer_reservations ORDER BY id"))
        ).all()  # fmt: skip
        credits = (
            await connection.execute(
                text(
                    "SELECT transfer_id, to_user_id, to_balance_after_kopecks FROM transfer_credits"
                )
            )
        ).all()
        ends = (
            await connection.execute(
                text("SELECT transfer_id, outcome, from_balance_after_kopecks FROM transfer_ends"
                     " ORDER BY transfer_id")
            )
        ).all()  # fmt: skip
    assert [tuple(r) for r in reservations] == [
        (settled.txn_id, 1, 2, 300, DEPOSIT_KOPECKS - 300, "paid"),
        (voided.txn_id, 4, 5, 40, DEPOSIT_KOPECKS - 40, None),
    ]
    assert [tuple(r) for r in credits] == [(settled.txn_id, 2, DEPOSIT_KOPECKS + 300)]
    assert [tuple(r) for r in ends] == [
        (settled.txn_id, "settled", None),
        (voided.txn_id, "voided", DEPOSIT_KOPECKS),
    ]
    for bucket in keyspace.all_buckets():
        assert await redis_client.xlen(keyspace.txn_dead_letter(bucket)) == 0
    # The last stream entry the ledger holds (what `wallet rebuild` continues the streams
    # from) counts these tables: the void was the last entry of all.
    [(last, _)] = cast(StreamEntries, await redis_client.xrevrange(keyspace.txn_stream(1), count=1))
    async with db_engine.connect() as connection:
        assert await last_stream_entry_id(connection) == parse_entry_id(last.decode())
    # Delivered again (a replay from the start): nothing more is stored.
    for bucket in keyspace.all_buckets():
        async with db_engine.begin() as connection:
            entries = cast(StreamEntries, await redis_client.xrange(keyspace.txn_stream(bucket)))
            records = [(i.decode(), record_from_stream_fields(f)) for i, f in entries]
            assert await insert_records(connection, records) == 0


async def test_malformed_or_conflicting_sides_are_dead_lettered(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts
) -> None:
    """An amount of 0, and a void of a transfer already stored as settled: refused by the
    writer with the reason, the rest stored."""
    await persist(redis_client, db_engine)  # the deposits
    stream = keyspace.txn_stream(1)
    await redis_client.xadd(stream, {"id": "77", "kind": "transfer_settled", "from": "1",
                                     "amount": "5"})  # fmt: skip
    await redis_client.xadd(stream, {"id": "78", "kind": "transfer_out", "from": "1", "to": "2",
                                     "amount": "0", "created_at_us": "1", "from_balance": "1",
                                     "idem_key": ""})  # fmt: skip
    await persist(redis_client, db_engine)
    await redis_client.xadd(stream, {"id": "77", "kind": "transfer_voided", "from": "1",
                                     "amount": "5", "created_at_us": "2",
                                     "from_balance": "5"})  # fmt: skip
    await persist(redis_client, db_engine)
    letters = cast(StreamEntries, await redis_client.xrange(keyspace.txn_dead_letter(1)))
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert len(reasons) == 2
    assert "malformed transfer_out record of transfer 78" in reasons[0]
    assert "transfer 77 is already in transfer_ends as another record" in reasons[1]
    async with db_engine.connect() as connection:
        ends = (
            await connection.execute(text("SELECT transfer_id, outcome FROM transfer_ends"))
        ).all()
    assert [tuple(row) for row in ends] == [(77, "settled")]


def period(items: list[Posting]) -> list[tuple[int, str, str | None, int, int]]:
    """Each posting as (id, kind, direction, signed amount, balance after)."""
    return [
        (p.txn_id, p.kind, "in" if p.incoming else "out", p.signed_kopecks, p.balance_after_kopecks)
        for p in items
    ]


@pytest.mark.parametrize("persisted", [False, True], ids=["tail", "ledger"])
async def test_reads_show_each_side_at_the_instant_its_balance_moved(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
    persisted: bool,
) -> None:
    """A settled transfer is in both parties' histories and statements, each at its own
    side's instant with its own balance after; one that a void undid is in its payer's
    statement with its reversal, and in no history. The same from the unpersisted tail
    (read-your-writes) and from the ledger."""
    start_us = int(time.time() * 1_000_000)
    settled = await funded.transfer(1, 2, 300)
    undone = await reserved_only(redis_client, funded, monkeypatch, 4, 5, 40)
    deposit = await funded.deposit(4, 10)  # between the reservation and its void
    legs = CrossingLegs(redis_client)
    assert await legs.abort(5, undone.token) is None
    assert await legs.complete(1, undone.txn_id) == "voided"
    if persisted:
        await persist(redis_client, db_engine)
    end_us = int(time.time() * 1_000_000) + 1

    async def statement(user_id: int) -> Statement:
        return await read_statement(redis_client, db_engine, user_id=user_id, from_us=start_us,
                                    to_us=end_us, max_items=10, tail_max_entries=100)  # fmt: skip

    async def history(user_id: int, direction: Direction = "all") -> list[Posting]:
        page = await read_history(redis_client, db_engine, user_id=user_id, kind="transfer",
                                  direction=direction, before=None, limit=10,
                                  tail_max_entries=100)  # fmt: skip
        return page.postings

    payer, payee = (await statement(1)).postings, (await statement(2)).postings
    assert period(payer) == [(settled.txn_id, "transfer", "out", -300, DEPOSIT_KOPECKS - 300)]
    assert period(payee) == [(settled.txn_id, "transfer", "in", 300, DEPOSIT_KOPECKS + 300)]
    # Each side at its own bucket's instant: the credit follows the reservation.
    assert payer[0].at_us == settled.created_at_us < payee[0].at_us
    assert period(await history(1)) == period(await history(1, "out")) == period(payer)
    assert period(await history(2)) == period(await history(2, "in")) == period(payee)
    assert await history(1, "in") == await history(2, "out") == []

    voided = await statement(4)
    assert period(voided.postings) == [
        (undone.txn_id, "transfer", "out", -40, DEPOSIT_KOPECKS - 40),
        (deposit.txn_id, "deposit", "in", 10, DEPOSIT_KOPECKS - 30),
        (undone.txn_id, "reversal", "in", 40, DEPOSIT_KOPECKS + 10),
    ]
    assert (voided.opening_balance_kopecks, voided.closing_balance_kopecks) == (
        DEPOSIT_KOPECKS,
        DEPOSIT_KOPECKS + 10,
    )
    assert voided.postings[2].as_json(with_direction=True)["reversal_of"] == undone.txn_id
    assert await history(4) == []
    assert (await statement(5)).postings == []  # the credit never landed
    # Past balances follow each posting, the reversal included.
    for user_id, posting in [(4, p) for p in voided.postings] + [(1, payer[0]), (2, payee[0])]:
        at = await balance_at(redis_client, db_engine, user_id=user_id, at_us=posting.at_us,
                              tail_max_entries=100)  # fmt: skip
        assert at == posting.balance_after_kopecks
    assert await balance_at(redis_client, db_engine, user_id=4, at_us=end_us,
                            tail_max_entries=100) == await balance(redis_client, 4)  # fmt: skip


async def test_reconcile_counts_money_in_transit_and_credits_expected(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settled, voided and half-way transfers and an expectation no reservation followed:
    reconcile is clean, counts what is in transit, and finds transit that drifted."""
    await funded.transfer(1, 2, 300)
    await funded.transfer(5, 3, 70)
    await voided_transfer(redis_client, funded, monkeypatch)
    legs = CrossingLegs(redis_client)
    await reserved_only(redis_client, funded, monkeypatch, 7, 8, 25)  # in transit
    assert await legs.expect(1, 9, 11, "t" * 22) == "expected"  # headroom in incoming_kopecks
    await persist(redis_client, db_engine)

    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert report.ok, format_reconcile(report)
    assert (report.in_transit_kopecks, report.in_transit_reservations) == (25, 1)
    assert "in transit between buckets: 25 kopecks" in format_reconcile(report)

    await redis_client.incrby(keyspace.transit(1), 5)
    drifted = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert drifted.transit_drifts == [TransitDrift(1, 30, 25)]
    assert "drift in transit of bucket 1" in format_reconcile(drifted)


async def test_rebuild_ends_the_transfers_it_finds_in_transit(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis lost with a transfer reserved whose credit was applied and one whose credit
    the ledger lacks: rebuild puts both back and ends them, settling the first and voiding
    the second (the ledger cannot tell a credit never made from a void lost with Redis,
    after which the client was told to try again); run again, it finds nothing half-way;
    the keys of the settled ones replay."""
    settled = await funded.transfer(1, 2, 300, idempotency_key="paid")
    await reserved_only(redis_client, funded, monkeypatch, 4, 5, 40, idempotency_key="k4")
    credited = await reserved_only(redis_client, funded, monkeypatch, 3, 8, 25, "k3")
    legs = CrossingLegs(redis_client)
    assert await legs._apply_credit(credited) == "applied"  # then the API died
    await persist(redis_client, db_engine)
    before = {u: await balance(redis_client, u) for u in USERS}
    await lose_redis(redis_client)

    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (report.transfers_settled, report.transfers_voided, report.transfers_stuck) == (1, 1, 0)
    assert report.ledger_last_txn_id >= credited.txn_id
    assert await in_transit(redis_client) == 0
    after = before | {4: DEPOSIT_KOPECKS}  # voided: the ledger holds no credit
    assert {u: await balance(redis_client, u) for u in USERS} == after
    await persist(redis_client, db_engine)
    again = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)  # nothing half-way
    assert (again.transfers_settled, again.transfers_voided) == (0, 0)
    assert {u: await balance(redis_client, u) for u in USERS} == after
    check = await assert_reconciled(redis_client, db_engine)
    assert check.in_transit_kopecks == 0
    replay = await funded.transfer(1, 2, 300, idempotency_key="paid")
    assert (replay.replayed, replay.txn_id) == (True, settled.txn_id)
    replay = await funded.transfer(3, 8, 25, idempotency_key="k3")
    assert (replay.replayed, replay.txn_id) == (True, credited.txn_id)
    # The void forgot the key of the transfer it undid: a retry is a new transfer.
    assert not (await funded.transfer(4, 5, 40, idempotency_key="k4")).replayed


async def test_a_history_across_buckets_pages_newest_first_by_instant(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts
) -> None:
    """User 2 receives from buckets 1 and 0 (ids of their epochs) and pays within its own:
    its history pages in the order its balance moved, not in id order, half persisted."""
    made = [await funded.transfer(1, 2, 10), await funded.transfer(2, 5, 20)]
    await persist(redis_client, db_engine)
    made += [await funded.transfer(3, 2, 30), await funded.deposit(2, 1)]
    made += [await funded.transfer(4, 2, 40)]
    ids = [txn.txn_id for txn in reversed(made)]  # newest first
    assert ids != sorted(ids, reverse=True)  # id order is not time order across buckets
    seen: list[int] = []
    before = None
    while True:
        page = await read_history(redis_client, db_engine, user_id=2, kind="transfer",
                                  direction="all", before=before, limit=1,
                                  tail_max_entries=100)  # fmt: skip
        seen += [posting.txn_id for posting in page.postings]
        if not page.has_more:
            break
        before = page.last
    assert seen == [txn_id for txn_id in ids if txn_id != made[3].txn_id]  # not the deposit


async def test_rebuild_over_a_redis_that_kept_its_data_takes_the_ledgers_transit(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expectation left by a request that died (its headroom goes with the rewritten
    incoming_kopecks, so the record goes too), a reservation left open and a transit that
    drifted: after a rebuild over the same Redis, all are the ledger's, and the record of
    the request whose reservation it put back under a new token expires as an ended one's."""
    legs = CrossingLegs(redis_client)
    token = "t" * 22
    assert await legs.expect(1, 9, 11, token) == "expected"
    left = await reserved_only(redis_client, funded, monkeypatch, 4, 5, 40)
    request_record = keyspace.request_outcome(4, left.token)
    assert await redis_client.ttl(request_record) == -1  # kept while the reservation is open
    await redis_client.incrby(keyspace.transit(1), 7)
    await persist(redis_client, db_engine)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert 0 < await redis_client.ttl(request_record) <= crossing.ENDED_REQUEST_TTL_S
    assert await incoming(redis_client, 9) == 0
    assert not await redis_client.exists(keyspace.inbound(9, token))
    assert await in_transit(redis_client) == 0
    await assert_reconciled(redis_client, db_engine)  # the void rebuild made of the reservation


async def test_reconcile_finds_a_side_whose_counterpart_the_ledger_lacks(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As after a Redis loss that one bucket's writer had stored further than the other's:
    a settle whose credit is gone, a credit with no reservation, and a void whose credit is
    there after all."""
    settled = await funded.transfer(1, 2, 300)
    undone = await voided_transfer(redis_client, funded, monkeypatch)
    await persist(redis_client, db_engine)
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok

    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE transfer_credits SET transfer_id = :void WHERE transfer_id = :settled"),
            {"settled": settled.txn_id, "void": undone.txn_id},
        )
        await connection.execute(
            text("INSERT INTO transfer_credits VALUES (77, 6, 8, 5, now(), 5, '1-0')")
        )
    report = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert sorted(report.uneven_sides) == sorted([
        UnevenSide(settled.txn_id, 1, "settled_without_credit"),
        UnevenSide(undone.txn_id, 1, "voided_with_credit"),
        UnevenSide(77, 2, "credit_without_reservation"),
    ])  # fmt: skip
    assert f"transfer {settled.txn_id} across buckets (bucket 1): settled, but its credit" in (
        format_reconcile(report)
    )


async def test_rebuild_completes_the_sides_a_redis_loss_left_uneven(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis lost after one bucket's writer had stored a transfer's side and the other's
    had not: a settle whose credit was lost, a credit whose reservation (and settle) was
    lost. Rebuild puts both back half-way, recovery completes them, and the writers store
    what was missing: every balance as the 201s said, the ledger whole."""
    uncredited = await funded.transfer(1, 2, 300)
    unreserved = await funded.transfer(3, 8, 25)
    await persist(redis_client, db_engine)
    after = {u: await balance(redis_client, u) for u in USERS}
    async with db_engine.begin() as connection:
        await connection.execute(text("DELETE FROM transfer_credits WHERE transfer_id = :id"),
                                 {"id": uncredited.txn_id})  # fmt: skip
        for table, key in (("transfer_ends", "transfer_id"), ("transfer_reservations", "id")):
            await connection.execute(text(f"DELETE FROM {table} WHERE {key} = :id"),
                                     {"id": unreserved.txn_id})  # fmt: skip
    await lose_redis(redis_client)

    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (report.transfers_settled, report.transfers_voided) == (2, 0)
    assert {u: await balance(redis_client, u) for u in USERS} == after
    assert await in_transit(redis_client) == 0
    await persist(redis_client, db_engine)
    # Run again: the ledger is whole now, nothing to complete.
    again = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (again.transfers_settled, again.transfers_voided) == (0, 0)
    assert {u: await balance(redis_client, u) for u in USERS} == after
    for bucket in keyspace.all_buckets():
        assert await redis_client.xlen(keyspace.txn_dead_letter(bucket)) == 0
    await assert_reconciled(redis_client, db_engine)


async def test_rebuild_refuses_over_a_void_whose_credit_is_in_the_ledger(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    undone = await voided_transfer(redis_client, funded, monkeypatch)
    await persist(redis_client, db_engine)
    async with db_engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO transfer_credits VALUES (:id, 4, 5, 40, now(), 40, '1-0')"),
            {"id": undone.txn_id},
        )
    with pytest.raises(RebuildRefused, match=f"transfer {undone.txn_id} across buckets is voided"):
        await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)


async def test_rebuild_refuses_a_repair_it_cannot_make_before_writing_anything(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts
) -> None:
    """A credit whose reservation the ledger lacks, larger than its payer has: debiting
    the payer again is impossible, and the rebuild says so before it writes."""
    await persist(redis_client, db_engine)
    async with db_engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO transfer_credits VALUES (77, 6, 8, :amount, now(), 5, '1-0')"),
            {"amount": 2 * DEPOSIT_KOPECKS},
        )
    await redis_client.hset(keyspace.user(6), "balance_kopecks", 1)  # to be rebuilt
    with pytest.raises(RebuildRefused, match="user 6 cannot be debited again"):
        await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert await balance(redis_client, 6) == 1  # nothing was changed


async def test_recovery_aborts_no_expectation_while_reservations_wait_their_turn(
    redis_client: RedisClient, funded: MoneyScripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transfers of bucket 1 left after their reservation, one taken a pass: the
    second's expectation, due too, waits for it, so both complete rather than one voided."""
    monkeypatch.setattr(crossing, "RECOVERY_BATCH", 1)

    with losing_redis_after_reservations(monkeypatch):
        for payer, payee in ((1, 2), (4, 5)):
            with refusing(refusals.OUTCOME_UNKNOWN):
                await funded.transfer(payer, payee, 10)
    legs = CrossingLegs(redis_client)
    assert await legs.recover(FAR_FUTURE_US) == 1  # one reservation, no expectation
    assert await legs.recover(FAR_FUTURE_US) == 1
    assert await legs.recover(FAR_FUTURE_US) == 0
    assert [await balance(redis_client, u) for u in (2, 5)] == [DEPOSIT_KOPECKS + 10] * 2
    await assert_conserved(redis_client)


async def test_a_counter_started_again_raises_the_clock_past_every_side_of_its_bucket(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts
) -> None:
    """After a failover the counter starts again in a new epoch and the bucket's clock is
    raised past the last stamp the ledger holds of the bucket: its credits of transfers
    from other buckets included, though they carry other buckets' ids."""
    await funded.transfer(1, 2, 10)  # credited on bucket 2 last
    await persist(redis_client, db_engine)
    async with db_engine.connect() as connection:
        credited_at = await connection.scalar(
            text("SELECT max(credited_at) FROM transfer_credits WHERE to_user_id = 2")
        )
    assert credited_at is not None
    seq = cast(bytes, await redis_client.get(keyspace.txn_seq(2)))
    await redis_client.set(keyspace.txn_seq_behind(2), seq)
    await redis_client.delete(keyspace.txn_seq(2))
    await redis_client.set(keyspace.txn_clock(2), 1)  # the new primary's clock lost it
    assert await restart_counter_set_aside(redis_client, db_engine, 2) is not None
    clock_us = int(await redis_client.get(keyspace.txn_clock(2)) or 0)
    assert clock_us >= us_from_datetime(credited_at)
