"""Holds across buckets (service/redis/holds_across.py, lua/hold_capture_across.lua,
lua/hold_void_across.lua, lua/claim_key.lua, lua/complete_claim.lua) against a real Redis
with three buckets (user u in bucket u % 3): the hold in its payer's bucket, the payee's
headroom kept by an expectation for its life, the payee's key claimed in the payee's bucket;
capture, void, expiry, recovery by the hold's status, a claim left pending by a crash, and
money conserved, counting what is in flight, at every step."""

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.domain.holds import Hold
from service.domain.refusals import Refused
from service.ledger.rebuild import rebuild
from service.redis import keyspace
from service.redis.crossing import CrossingLegs
from service.redis.holds import CaptureAccepted, HoldScripts
from service.redis.holds_across import HoldsAcross
from service.redis.money import MoneyScripts
from service.redis.scripts import load_script_source
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.crossing import (
    DEPOSIT_KOPECKS,
    USERS,
    assert_conserved,
    assert_reconciled,
    assert_settled_down,
    in_transit,
    incoming,
    losing_redis_after_reservations,
    only_due_reservation,
    stream_kinds,
)
from tests.support.helpers import (
    StreamEntries,
    balance,
    lose_redis,
    persist,
    refusing,
    snapshot,
)

FAR_FUTURE_US = 2**52
# Past the deadline recovery gives an expectation it found due again.
LATER_US = 10**9
HOUR_S = 3600
# Payer 4 in bucket 1, payee 5 in bucket 2.
PAYER, PAYEE, STRANGER = 4, 5, 6
PAYER_BUCKET = 1


@pytest.fixture
def holds(redis_client: RedisClient, settings: Settings) -> HoldScripts:
    return HoldScripts(redis_client, settings)


async def held(redis: RedisClient, user_id: int) -> int:
    return int(await redis.hget(keyspace.user(user_id), "held_kopecks") or 0)


async def hold_status(redis: RedisClient, hold: Hold) -> str:
    raw = await redis.hget(keyspace.hold(PAYER_BUCKET, hold.hold_id), "status")
    return cast(bytes, raw).decode()


async def make_hold(holds: HoldScripts, amount: int, expires_in_s: int = HOUR_S) -> Hold:
    return (await holds.create(PAYER, PAYEE, amount, expires_in_s)).hold


async def capture(
    holds: HoldScripts, hold: Hold, amount: int | None = None, key: str | None = None
) -> CaptureAccepted:
    return await holds.capture(PAYEE, hold.hold_id, amount, key, hold_bucket=PAYER_BUCKET)


async def void(holds: HoldScripts, hold: Hold, key: str | None = None) -> Hold:
    return (await holds.void(PAYEE, hold.hold_id, key, hold_bucket=PAYER_BUCKET)).hold


async def expire_now(redis: RedisClient, hold: Hold) -> None:
    """Rewrites a hold's expires_at_us to now everywhere Redis keeps it."""
    seconds, micros = await redis.time()
    now_us = seconds * 1_000_000 + micros
    await redis.hset(keyspace.hold(PAYER_BUCKET, hold.hold_id), "expires_at_us", str(now_us))
    payer_member = f"{hold.hold_id}:{PAYEE}:{hold.amount_kopecks}"
    due_member = f"{hold.hold_id}:{PAYER}:{PAYEE}:{hold.amount_kopecks}"
    await redis.zadd(keyspace.pending_holds(PAYER), {payer_member: now_us}, xx=True)
    await redis.zadd(keyspace.holds_due(PAYER_BUCKET), {due_member: now_us}, xx=True)


@contextmanager
def dying_after_the_claim(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within it, the API dies right after it claimed the key: the hold is never acted on."""

    async def died(self: HoldsAcross, *args: object) -> list[bytes]:
        raise RedisConnectionError("the API died after the claim")

    with monkeypatch.context() as patch:
        patch.setattr(HoldsAcross, "_apply", died)
        yield


async def test_a_hold_across_buckets_keeps_the_payees_headroom_in_the_payees_bucket(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    hold = await make_hold(holds, 300)
    assert (await held(redis_client, PAYER), await incoming(redis_client, PAYEE)) == (300, 0 + 300)
    raw = cast(
        dict[bytes, bytes], await redis_client.hgetall(keyspace.hold(PAYER_BUCKET, hold.hold_id))
    )
    token = raw[b"token"].decode()
    expectation = cast(
        dict[bytes, bytes], await redis_client.hgetall(keyspace.inbound(PAYEE, token))
    )
    assert expectation[b"state"] == b"expected"
    assert expectation[b"hold"] == b"1"
    deadline_us = await redis_client.zscore(keyspace.inbound_due(2), f"{PAYEE}:{token}")
    assert deadline_us is not None
    assert deadline_us > hold.expires_at_us
    assert not await redis_client.hexists(keyspace.user(PAYER), "incoming_kopecks")
    assert await stream_kinds(redis_client, PAYER_BUCKET) == ["deposit"] * 3 + ["hold_created"]
    await assert_conserved(redis_client)


async def test_a_capture_across_buckets_credits_the_payee_once(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    hold = await make_hold(holds, 300)
    captured = await capture(holds, hold, 120, key="cap-1")
    assert (captured.from_user_id, captured.amount_kopecks, captured.replayed) == (
        PAYER,
        120,
        False,
    )
    assert await balance(redis_client, PAYER) == DEPOSIT_KOPECKS - 120
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 120
    assert await held(redis_client, PAYER) == 0
    assert await hold_status(redis_client, hold) == "captured"
    await assert_settled_down(redis_client)
    assert (await stream_kinds(redis_client, PAYER_BUCKET))[-2:] == [
        "transfer_out",
        "transfer_settled",
    ]
    [*_, (_, credit)] = cast(StreamEntries, await redis_client.xrange(keyspace.txn_stream(2)))
    assert credit[b"kind"] == b"transfer_in"
    assert credit[b"hold_id"] == str(hold.hold_id).encode()
    assert credit[b"amount"] == b"120"
    # A retry with the key replays it; the same body without one finds the hold captured.
    again = await capture(holds, hold, 120, key="cap-1")
    assert (again.txn_id, again.amount_kopecks, again.replayed) == (captured.txn_id, 120, True)
    with refusing(refusals.HOLD_NOT_PENDING):
        await capture(holds, hold, 120)
    await assert_settled_down(redis_client)


async def test_a_void_across_buckets_gives_both_sides_back(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    hold = await make_hold(holds, 300)
    voided = await holds.void(PAYEE, hold.hold_id, "void-1", hold_bucket=PAYER_BUCKET)
    assert (voided.hold.status, voided.hold.from_user_id, voided.replayed) == (
        "voided",
        PAYER,
        False,
    )
    assert await hold_status(redis_client, hold) == "voided"
    await assert_settled_down(redis_client)
    again = await holds.void(PAYEE, hold.hold_id, "void-1", hold_bucket=PAYER_BUCKET)
    assert (again.hold, again.replayed) == (voided.hold, True)
    with refusing(refusals.HOLD_NOT_PENDING) as refused:
        await capture(holds, hold, key="cap-after-void")
    assert not refused.value.replayed
    with refusing(refusals.HOLD_NOT_PENDING) as refused:
        await capture(holds, hold, key="cap-after-void")
    assert refused.value.replayed
    assert [await balance(redis_client, u) for u in USERS] == [DEPOSIT_KOPECKS] * len(USERS)


async def test_refusals_of_a_payee_across_buckets_are_recorded_as_in_one_bucket(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    hold = await make_hold(holds, 300)
    # Too much: a validation error, not recorded; the key is free for the right body after.
    with refusing(refusals.CAPTURE_EXCEEDS_HOLD) as refused:
        await capture(holds, hold, 301, key="k")
    assert refused.value.field == "amount"
    # Another payee (of the payee's bucket) finds no hold of theirs: recorded.
    with refusing(refusals.HOLD_NOT_FOUND):
        await holds.capture(8, hold.hold_id, None, "k", hold_bucket=PAYER_BUCKET)
    with refusing(refusals.HOLD_NOT_FOUND) as refused:
        await holds.capture(8, hold.hold_id, None, "k", hold_bucket=PAYER_BUCKET)
    assert refused.value.replayed
    # A key used for a transfer refuses a capture, and a capture's key another body.
    await funded.transfer(PAYEE, 7, 10, idempotency_key="t-1")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await capture(holds, hold, key="t-1")
    assert (await capture(holds, hold, 300, key="k")).amount_kopecks == 300
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await capture(holds, hold, 299, key="k")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await funded.transfer(PAYEE, 7, 10, idempotency_key="k")
    await assert_settled_down(redis_client)


@pytest.mark.parametrize(
    ("payee", "refusal"),
    [(11, refusals.RECIPIENT_NOT_FOUND), (5, refusals.BALANCE_LIMIT_EXCEEDED)],
)
async def test_a_hold_the_payees_bucket_refuses_keeps_no_headroom(
    redis_client: RedisClient,
    funded: MoneyScripts,
    holds: HoldScripts,
    payee: int,
    refusal: refusals.Refusal,
) -> None:
    if refusal is refusals.BALANCE_LIMIT_EXCEEDED:
        await redis_client.hset(keyspace.user(payee), "balance_kopecks", str(10**15 - 10))
    with refusing(refusal):
        await holds.create(PAYER, payee, 300, HOUR_S, idempotency_key="h")
    with refusing(refusal) as refused:
        await holds.create(PAYER, payee, 300, HOUR_S, idempotency_key="h")
    assert refused.value.replayed
    assert await held(redis_client, PAYER) == 0
    assert await incoming(redis_client, payee) == 0
    assert await redis_client.zcard(keyspace.inbound_due(2)) == 0


async def test_a_hold_the_payer_cannot_afford_gives_the_headroom_back(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    with refusing(refusals.INSUFFICIENT_FUNDS):
        await make_hold(holds, DEPOSIT_KOPECKS + 1)
    hold = await make_hold(holds, 100)
    again = await holds.create(PAYER, PAYEE, 100, HOUR_S, idempotency_key="same")
    replay = await holds.create(PAYER, PAYEE, 100, HOUR_S, idempotency_key="same")
    assert replay.replayed
    assert replay.hold.hold_id == again.hold.hold_id != hold.hold_id
    assert await incoming(redis_client, PAYEE) == 200  # the two holds, not the replay
    assert await redis_client.zcard(keyspace.inbound_due(2)) == 2


async def test_the_sweeper_expires_a_hold_across_buckets_on_both_sides(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    hold = await make_hold(holds, 300)
    assert await holds.sweep(PAYER_BUCKET, 10) == 0
    await expire_now(redis_client, hold)
    with refusing(refusals.HOLD_NOT_PENDING):
        await capture(holds, hold)
    assert await holds.sweep(PAYER_BUCKET, 10) == 1
    assert await hold_status(redis_client, hold) == "expired"
    await assert_settled_down(redis_client)
    assert (await stream_kinds(redis_client, PAYER_BUCKET))[-1] == "hold_expired"


async def test_recovery_ends_a_holds_expectation_only_once_the_hold_ended(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    legs = CrossingLegs(redis_client)
    hold = await make_hold(holds, 300)
    # Pending (past its expiry, not swept yet): the sweeper ends it, recovery waits.
    assert await legs.recover(now_us=FAR_FUTURE_US) == 0
    assert await incoming(redis_client, PAYEE) == 300
    # Voided on the payer's bucket by a request that died before the abort.
    await redis_client.hset(keyspace.hold(PAYER_BUCKET, hold.hold_id), "status", "voided")
    assert await legs.recover(now_us=int(time.time() * 1_000_000)) == 0  # not due yet
    assert await legs.recover(now_us=FAR_FUTURE_US + LATER_US) == 1
    assert await incoming(redis_client, PAYEE) == 0


async def test_recovery_aborts_the_expectation_of_a_hold_never_made(
    redis_client: RedisClient,
    funded: MoneyScripts,
    holds: HoldScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def lost(*args: object) -> list[bytes]:
        raise RedisConnectionError("the API lost Redis before the hold")

    with monkeypatch.context() as patch:
        patch.setattr("service.redis.money.MoneyScriptRunner.run", lost)
        with pytest.raises(RedisConnectionError):
            await make_hold(holds, 300)
    assert await incoming(redis_client, PAYEE) == 300
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 1
    assert await incoming(redis_client, PAYEE) == 0
    await assert_settled_down(redis_client)


async def test_a_capture_left_after_its_reservation_is_completed_by_a_retry_or_recovery(
    redis_client: RedisClient,
    funded: MoneyScripts,
    holds: HoldScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = await make_hold(holds, 300), await make_hold(holds, 200)
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await capture(holds, first, 100, key="cap")
    reservation = await only_due_reservation(redis_client, PAYER_BUCKET)
    assert reservation.hold_id == first.hold_id
    assert not reservation.batch_leg
    assert await in_transit(redis_client) == 100
    await assert_conserved(redis_client)
    # The retry finds the claim pending, asks the payer's bucket, and completes it.
    again = await capture(holds, first, 100, key="cap")
    assert (again.txn_id, again.replayed) == (reservation.txn_id, True)
    assert await capture(holds, first, 100, key="cap") == again
    # Without a retry, recovery credits it after its deadline.
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await capture(holds, second)
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 1
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 300
    await assert_settled_down(redis_client)


@pytest.mark.parametrize("action", ["capture", "void"])
async def test_a_claim_whose_request_died_is_taken_over_by_its_retry(
    redis_client: RedisClient,
    funded: MoneyScripts,
    holds: HoldScripts,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    hold = await make_hold(holds, 300)
    act = capture(holds, hold, key="k") if action == "capture" else void(holds, hold, "k")
    with dying_after_the_claim(monkeypatch), pytest.raises(RedisConnectionError):
        await act
    claim = await redis_client.hget(keyspace.idempotency(PAYEE, "k"), "outcome")
    assert claim == b"claimed"
    if action == "capture":
        assert not (await capture(holds, hold, key="k")).replayed
        assert (await capture(holds, hold, key="k")).replayed
        assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 300
    else:
        assert not (await holds.void(PAYEE, hold.hold_id, "k", hold_bucket=PAYER_BUCKET)).replayed
        assert (await holds.void(PAYEE, hold.hold_id, "k", hold_bucket=PAYER_BUCKET)).replayed
    await assert_settled_down(redis_client)


async def test_a_request_whose_claim_a_retry_took_over_changes_nothing(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    """The claim's first request, still on its way, finds its token fenced off on the
    payer's bucket once a retry asked after it: 503, nothing done twice."""
    hold = await make_hold(holds, 300)
    across = HoldsAcross(redis_client, Settings())
    facts = await holds._facts(PAYEE, hold.hold_id, "k", PAYER_BUCKET)
    slow = across._act
    started, go_on = asyncio.Event(), asyncio.Event()
    real_apply = HoldsAcross._apply

    async def slow_apply(self: HoldsAcross, *args: object) -> list[bytes]:
        started.set()
        await go_on.wait()
        return await real_apply(self, *args)  # type: ignore[arg-type]

    across._apply = slow_apply.__get__(across)  # type: ignore[method-assign]
    from service.redis.holds_across import _Action

    first = asyncio.create_task(
        slow(_Action("capture", PAYEE, hold.hold_id, None, "k", None), facts)
    )
    await started.wait()
    retried = await capture(holds, hold, key="k")
    assert not retried.replayed
    go_on.set()
    with refusing(refusals.REQUEST_NOT_APPLIED):
        await first
    assert (await capture(holds, hold, key="k")).txn_id == retried.txn_id
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 300
    await assert_settled_down(redis_client)


async def test_holds_across_buckets_under_concurrency_conserve_money(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    """Every payer holds for every payee of another bucket while transfers run; each payee
    captures some, voids others, and a sweep expires the rest."""

    async def payer(user_id: int) -> list[Hold]:
        made = []
        for to_user_id in USERS:
            if keyspace.same_bucket(user_id, to_user_id):
                continue
            made.append((await holds.create(user_id, to_user_id, 100, HOUR_S)).hold)
            await funded.transfer(user_id, to_user_id, 7)
        return made

    made = [hold for batch in await asyncio.gather(*(payer(u) for u in USERS)) for hold in batch]
    await assert_conserved(redis_client)

    async def act(hold: Hold) -> None:
        bucket = keyspace.bucket_of(hold.from_user_id)
        if hold.hold_id % 3 == 0:
            await holds.capture(hold.to_user_id, hold.hold_id, 60, f"c{hold.hold_id}", None, bucket)
        elif hold.hold_id % 3 == 1:
            await holds.void(hold.to_user_id, hold.hold_id, f"v{hold.hold_id}", None, bucket)

    await asyncio.gather(*(act(hold) for hold in made))
    await assert_conserved(redis_client)
    left = [hold for hold in made if hold.hold_id % 3 == 2]
    for hold in left:
        bucket = keyspace.bucket_of(hold.from_user_id)
        await redis_client.hset(keyspace.hold(bucket, hold.hold_id), "expires_at_us", "1")
        await redis_client.zadd(
            keyspace.holds_due(bucket),
            {f"{hold.hold_id}:{hold.from_user_id}:{hold.to_user_id}:100": 1},
            xx=True,
        )
    swept = sum([await holds.sweep(bucket, 1000) for bucket in keyspace.all_buckets()])
    assert swept == len(left)
    assert [await held(redis_client, u) for u in USERS] == [0] * len(USERS)
    await assert_settled_down(redis_client)
    for hold in made:
        status = await redis_client.hget(
            keyspace.hold(keyspace.bucket_of(hold.from_user_id), hold.hold_id), "status"
        )
        assert status == (b"captured", b"voided", b"expired")[hold.hold_id % 3]


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        # Each call has the script's arity and one fault: a void with an amount; a taken-over
        # token without a key; another user's key.
        ("claim_key", ["txn:seq:{b2}", "user:{b2}:5"],
         ["5", "", "60", "0", "1", "1", "void", "7", "3", "t" * 22, ""]),
        ("claim_key", ["txn:seq:{b2}", "user:{b2}:5"],
         ["5", "", "60", "0", "1", "1", "capture", "7", "", "t" * 22, "u" * 22]),
        ("claim_key", ["txn:seq:{b2}", "user:{b2}:5", "idem:{b2}:8:k"],
         ["5", "k", "60", "0", "1", "1", "capture", "7", "", "t" * 22, ""]),
        # An outcome that is a claim; an unknown action.
        ("complete_claim", ["idem:{b2}:5:k"],
         ["5", "k", "t" * 22, "60", "capture", "claimed", "", "", "", ""]),
        ("complete_claim", ["idem:{b2}:5:k"],
         ["5", "k", "t" * 22, "60", "refund", "ok", "", "", "", ""]),
        # A payee who is the payer; a deadline of 0.
        ("hold_capture_across",
         ["txn:seq:{b1}", "txn:stream:{b1}", "user:{b1}:4", "req:{b1}:4:" + "t" * 22,
          "hold:{b1}:9", "holds:due:{b1}", "holds:{b1}:4", "transit:{b1}", "outbound:due:{b1}",
          "txn:clock:{b1}"],
         ["4", "4", "9", "", "t" * 22, "60", "1000", "k"]),
        ("hold_capture_across",
         ["txn:seq:{b1}", "txn:stream:{b1}", "user:{b1}:4", "req:{b1}:4:" + "t" * 22,
          "hold:{b1}:9", "holds:due:{b1}", "holds:{b1}:4", "transit:{b1}", "outbound:due:{b1}",
          "txn:clock:{b1}"],
         ["4", "5", "9", "", "t" * 22, "60", "0", "k"]),
        # Another payer's holds.
        ("hold_void_across",
         ["txn:seq:{b1}", "txn:stream:{b1}", "user:{b1}:4", "req:{b1}:4:" + "t" * 22,
          "hold:{b1}:9", "holds:due:{b1}", "holds:{b1}:7", "txn:clock:{b1}"],
         ["4", "5", "9", "t" * 22, "60", "60", ""]),
    ],
)  # fmt: skip
async def test_malformed_calls_change_nothing(
    redis_client: RedisClient,
    funded: MoneyScripts,
    script: str,
    keys: list[str],
    args: list[str],
) -> None:
    before = await snapshot(redis_client)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] == b"invalid_argument"
    assert await snapshot(redis_client) == before


async def test_the_ledger_stores_holds_across_buckets_and_reconciles_with_them_pending(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, holds: HoldScripts
) -> None:
    pending = await make_hold(holds, 50)
    captured_hold, voided_hold = await make_hold(holds, 300), await make_hold(holds, 200)
    captured = await capture(holds, captured_hold, 120, key="cap")
    await void(holds, voided_hold, "void")
    await assert_reconciled(redis_client, db_engine)
    async with db_engine.connect() as connection:
        rows = await connection.execute(text("SELECT hold_id, event FROM hold_events"))
        events: dict[int, str] = {hold_id: event for hold_id, event in rows}
        capture_of = (
            await connection.execute(
                text("SELECT transaction_id, amount_kopecks FROM hold_events WHERE hold_id = :h"),
                {"h": captured_hold.hold_id},
            )
        ).one()
        sides = (
            await connection.execute(
                text(
                    "SELECT r.hold_id, c.hold_id, c.amount_kopecks FROM transfer_reservations r"
                    " JOIN transfer_credits c ON c.transfer_id = r.id WHERE r.id = :id"
                ),
                {"id": captured.txn_id},
            )
        ).one()
    assert events == {captured_hold.hold_id: "captured", voided_hold.hold_id: "voided"}
    assert tuple(capture_of) == (captured.txn_id, 120)
    assert tuple(sides) == (captured_hold.hold_id, captured_hold.hold_id, 120)
    assert pending.hold_id not in events
    assert await incoming(redis_client, PAYEE) == 50


async def test_rebuild_puts_a_pending_hold_across_buckets_back_with_its_expectation(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, holds: HoldScripts
) -> None:
    pending = await make_hold(holds, 300)
    await assert_reconciled(redis_client, db_engine)
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (await held(redis_client, PAYER), await incoming(redis_client, PAYEE)) == (300, 300)
    await assert_reconciled(redis_client, db_engine)
    # Recovery finds the hold by the record the rebuild wrote: pending, so it waits.
    assert await CrossingLegs(redis_client).recover(now_us=FAR_FUTURE_US) == 0
    assert (await capture(holds, pending, 100)).amount_kopecks == 100
    await assert_settled_down(redis_client)
    await assert_reconciled(redis_client, db_engine)


async def test_recovery_waits_while_a_captured_holds_reservation_is_open(
    redis_client: RedisClient,
    funded: MoneyScripts,
    holds: HoldScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hold's expectation falls due while its capture's reservation cannot be credited
    yet (its buckets unreachable at its turn): recovery must not fence the credit off. The
    hold's hash is kept meanwhile, whatever its retention, so that its status is read."""
    hold = await make_hold(holds, 300)
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await capture(holds, hold, 200)
    reservation = await only_due_reservation(redis_client, PAYER_BUCKET)
    hold_key = keyspace.hold(PAYER_BUCKET, hold.hold_id)
    assert await redis_client.ttl(hold_key) == -1  # kept while the reservation is open
    later_us = FAR_FUTURE_US + 3 * LATER_US
    await redis_client.zadd(
        keyspace.outbound_due(PAYER_BUCKET), {str(reservation.txn_id): later_us}
    )
    legs = CrossingLegs(redis_client)
    assert await legs.recover(now_us=FAR_FUTURE_US) == 0
    token = cast(bytes, await redis_client.hget(hold_key, "token")).decode()
    assert await redis_client.hget(keyspace.inbound(PAYEE, token), "state") == b"expected"
    assert await legs.recover(now_us=later_us) == 1
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 200
    assert await balance(redis_client, PAYER) == DEPOSIT_KOPECKS - 200
    assert await redis_client.ttl(hold_key) > 0  # its retention from the reservation's end
    await assert_settled_down(redis_client)


async def test_a_capture_and_a_void_racing_for_a_hold_end_it_once(
    redis_client: RedisClient, funded: MoneyScripts, holds: HoldScripts
) -> None:
    """Captures, voids and sweeps of the same holds at once: each hold ends once, and each
    payer pays exactly what was captured of its holds."""
    made = [await make_hold(holds, 100 + n) for n in range(10)]

    async def race(hold: Hold) -> int:
        results = await asyncio.gather(
            capture(holds, hold, 50),
            void(holds, hold),
            holds.sweep(PAYER_BUCKET, 10),
            return_exceptions=True,
        )
        captured, voided, _ = results
        ended = [r for r in (captured, voided) if not isinstance(r, BaseException)]
        assert len(ended) == 1, results
        loser = voided if isinstance(captured, CaptureAccepted) else captured
        assert isinstance(loser, Refused), loser
        assert loser.refusal is refusals.HOLD_NOT_PENDING
        return captured.amount_kopecks if isinstance(captured, CaptureAccepted) else 0

    paid = sum(await asyncio.gather(*(race(hold) for hold in made)))
    assert await balance(redis_client, PAYER) == DEPOSIT_KOPECKS - paid
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + paid
    await assert_settled_down(redis_client)


async def test_rebuild_credits_a_capture_left_after_its_reservation_and_keeps_its_key(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    funded: MoneyScripts,
    holds: HoldScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis lost with a capture reserved and not credited (its API died, the payee was
    told outcome_unknown): rebuild credits it (voiding it would give the money back while
    the hold stays captured), and the payee's retry with its key gets the 201."""
    hold, voided = await make_hold(holds, 300), await make_hold(holds, 100)
    with losing_redis_after_reservations(monkeypatch), refusing(refusals.OUTCOME_UNKNOWN):
        await capture(holds, hold, 200, key="cap")
    reservation = await only_due_reservation(redis_client, PAYER_BUCKET)
    await void(holds, voided, "void")
    await persist(redis_client, db_engine)
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert (report.transfers_settled, report.transfers_voided) == (1, 0)
    assert await balance(redis_client, PAYER) == DEPOSIT_KOPECKS - 200
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 200
    again = await capture(holds, hold, 200, key="cap")
    assert (again.txn_id, again.replayed) == (reservation.txn_id, True)
    replay = await holds.void(PAYEE, voided.hold_id, "void", hold_bucket=PAYER_BUCKET)
    assert replay.replayed
    await assert_settled_down(redis_client)
    await assert_reconciled(redis_client, db_engine)


async def test_rebuild_never_brings_back_a_hold_whose_capture_reached_only_the_payee(
    redis_client: RedisClient, db_engine: AsyncEngine, funded: MoneyScripts, holds: HoldScripts
) -> None:
    """Redis lost after the payee's writer stored a capture's credit and before the payer's
    stored its reservation (which carries the hold's captured event): rebuild debits the
    payer again through a reservation naming the hold, and the hold stays captured. It must
    not come back pending, to be captured a second time."""
    hold = await make_hold(holds, 300)
    captured = await capture(holds, hold)
    await persist(redis_client, db_engine)
    async with db_engine.begin() as connection:
        for table, key in (("transfer_ends", "transfer_id"), ("transfer_reservations", "id")):
            await connection.execute(text(f"DELETE FROM {table} WHERE {key} = :id"),
                                     {"id": captured.txn_id})  # fmt: skip
        await connection.execute(
            text("DELETE FROM hold_events WHERE hold_id = :id"), {"id": hold.hold_id}
        )
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert await balance(redis_client, PAYER) == DEPOSIT_KOPECKS - 300
    assert await balance(redis_client, PAYEE) == DEPOSIT_KOPECKS + 300
    assert (await held(redis_client, PAYER), await incoming(redis_client, PAYEE)) == (0, 0)
    with refusing(refusals.HOLD_NOT_FOUND):  # not in Redis: the API asks the ledger
        await capture(holds, hold)
    await assert_settled_down(redis_client)
    await assert_reconciled(redis_client, db_engine)
    async with db_engine.connect() as connection:
        event = await connection.scalar(
            text("SELECT event FROM hold_events WHERE hold_id = :id"), {"id": hold.hold_id}
        )
    assert event == "captured"
