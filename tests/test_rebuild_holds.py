"""`wallet rebuild` after a Redis loss with holds, refunds and batches in the ledger: the
wallets' held and incoming amounts, the pending holds' hashes and sorted sets, the refunded
totals, and every idempotency record, which replays exactly (tests/support/mixed_workload.py
gives the workload). Real Redis and PostgreSQL."""

from typing import Any, cast

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerHold, LedgerHoldEvent, LedgerTransaction
from service.domain import refusals
from service.domain.refusals import Refusal, Refused
from service.ledger.hold_totals import last_stream_entry_id
from service.ledger.rebuild import format_report, rebuild
from service.ledger.reconcile import format_report as format_reconcile
from service.ledger.reconcile import reconcile
from service.redis import keyspace
from service.redis.streams import stream_id
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import lose_redis, persist, refusing, snapshot
from tests.support.mixed_workload import USERS, Scripts, Workload, run_mixed_workload

TTL_S = 24 * 3600


@pytest.fixture
def scripts(redis_client: RedisClient, settings: Settings) -> Scripts:
    return Scripts.bind(redis_client, settings)


@pytest.fixture
async def workload(redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts) -> Workload:
    return await run_mixed_workload(redis_client, db_engine, scripts)


async def wallets(redis: RedisClient) -> dict[int, tuple[int, int, int]]:
    """(balance, held, incoming) of every user, a missing field as 0."""
    found = {}
    for user_id in USERS:
        raw = await redis.hmget(
            keyspace.user(user_id), ["balance_kopecks", "held_kopecks", "incoming_kopecks"]
        )
        found[user_id] = cast(tuple[int, int, int], tuple(int(v or 0) for v in raw))
    return found


def keys_of(state: dict[bytes, Any], *prefixes: bytes) -> dict[bytes, Any]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


async def ttls(redis: RedisClient, keys: list[bytes]) -> dict[bytes, int]:
    return {key: await redis.pttl(key) for key in keys}


def far_apart(
    before: dict[bytes, int], after: dict[bytes, int], slack_ms: int = 10_000
) -> dict[bytes, tuple[int, int | None]]:
    """The keys whose TTLs differ by more than slack_ms."""
    return {
        k: (before[k], after.get(k))
        for k in before
        if k not in after or abs(before[k] - after[k]) > slack_ms
    }


async def test_rebuild_puts_back_holds_refunds_and_every_idempotency_record(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    before = await snapshot(redis_client)
    before_wallets = await wallets(redis_client)
    released = workload.holds["released"]
    # Expired, the payer's side released, not yet swept: Redis still counts it toward its
    # payee; the ledger has its expiry.
    released_member = (
        f"{released.hold_id}:{released.from_user_id}:{released.to_user_id}:"
        f"{released.amount_kopecks}".encode()
    )
    assert released_member in dict(before[keyspace.holds_due(BUCKET).encode()])
    idem_keys = [keyspace.idempotency(owner, key).encode() for owner, key in workload.keyed]
    assert set(keys_of(before, b"idem:")) == set(idem_keys)  # every request was accepted
    pending = [workload.holds[n] for n in ("pending", "pending-2", "incoming-only", "unreleased")]
    hold_keys = [keyspace.hold(BUCKET, hold.hold_id).encode() for hold in pending]
    # (The aged hold's hash kept the TTL it was made with: not compared.)
    before_ttls = await ttls(redis_client, idem_keys + hold_keys[:-1])
    seq_before = int(before[keyspace.txn_seq(BUCKET).encode()])
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok

    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    after = await snapshot(redis_client)

    assert (report.users, report.wallets_created) == (len(USERS), len(USERS))
    assert report.holds_restored == len(pending)
    assert report.refunded_totals_restored == 3
    assert (report.idempotency_keys_restored, report.idempotency_keys_kept) == (
        len(workload.keyed),
        0,
    )
    assert report.idempotency_keys_skipped == 0
    assert "4 pending holds restored" in format_report(report)

    # Wallets: as before, but for the unswept expired hold, which no longer counts.
    expected = dict(before_wallets)
    balance, held, incoming = expected[released.to_user_id]
    expected[released.to_user_id] = (balance, held, incoming - released.amount_kopecks)
    assert await wallets(redis_client) == expected

    # The holds' sorted sets, hashes (and their expiry), refunded totals, records.
    due = dict(before[keyspace.holds_due(BUCKET).encode()])
    del due[released_member]
    assert dict(after[keyspace.holds_due(BUCKET).encode()]) == due
    for user_id in USERS:
        holds_key = keyspace.pending_holds(user_id).encode()
        assert after.get(holds_key) == before.get(holds_key), user_id
    assert keys_of(after, b"hold:") == {key: before[key] for key in hold_keys}
    assert keys_of(after, b"refunded:") == keys_of(before, b"refunded:")
    assert keys_of(after, b"idem:") == keys_of(before, b"idem:")
    assert far_apart(before_ttls, await ttls(redis_client, idem_keys + hold_keys[:-1])) == {}
    for refunded in keys_of(after, b"refunded:"):
        assert await redis_client.ttl(refunded) == -1

    # Every retry replays the first answer, moving nothing; another body is refused.
    for (owner, key), (answer, again, other) in workload.keyed.items():
        replay = await again()
        assert replay.replayed, (owner, key)
        assert replay == type(answer)(**{**_fields(answer), "replayed": True}), (owner, key)
        with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
            await other()
    assert await wallets(redis_client) == expected
    assert int(cast(bytes, await redis_client.get(keyspace.txn_seq(BUCKET)))) >= seq_before
    check = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert check.ok, format_reconcile(check)


def _fields(answer: Any) -> dict[str, Any]:
    return {name: getattr(answer, name) for name in answer.__slots__}


async def test_restored_holds_work_as_before(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    """A restored pending hold can be captured; one past its expiry is expired by the
    sweeper as usual, with its record; a new hold takes an id above the ledger's."""
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    pending, unreleased = workload.holds["pending"], workload.holds["unreleased"]

    captured = await scripts.holds.capture(2, pending.hold_id, 1_000, "after")
    assert (captured.from_user_id, captured.amount_kopecks) == (1, 1_000)
    assert await scripts.holds.sweep(BUCKET, 100) == 1
    assert not await redis_client.exists(keyspace.pending_holds(unreleased.from_user_id))
    new = await scripts.holds.create(3, 5, 10, 3600)
    assert new.hold.hold_id > max(hold.hold_id for hold in workload.holds.values())
    # The new stream's entries continue above the ledger's (reconcile compares them).
    async with db_engine.connect() as connection:
        stored = await last_stream_entry_id(connection)
    assert stored is not None
    newest = cast(
        list[tuple[bytes, Any]], await redis_client.xrevrange(keyspace.txn_stream(BUCKET), count=1)
    )
    assert stream_id(newest[0][0]) > stored
    await persist(redis_client, db_engine)
    async with db_engine.connect() as connection:
        ended = await connection.execute(
            select(LedgerHoldEvent.event).where(LedgerHoldEvent.hold_id == unreleased.hold_id)
        )
        assert ended.scalar_one() == "expired"
    check = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert check.ok, format_reconcile(check)


async def test_a_rebuild_over_the_live_redis_changes_nothing_but_the_unswept_hold(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    before = await wallets(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    released = workload.holds["released"]
    assert report.wallets_updated == 1  # the payee of the unswept expired hold
    assert report.idempotency_keys_kept == len(workload.keyed)
    after = await wallets(redis_client)
    assert after[released.to_user_id][2] == before[released.to_user_id][2] - 800
    assert {u: w for u, w in after.items() if u != released.to_user_id} == {
        u: w for u, w in before.items() if u != released.to_user_id
    }
    again = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (again.wallets_created, again.wallets_updated) == (0, 0)


async def test_without_the_ledgers_fingerprints_retries_are_refused_never_applied_twice(
    redis_client: RedisClient, db_engine: AsyncEngine, scripts: Scripts, workload: Workload
) -> None:
    """Rows written before the scripts recorded idem_fp: a capture or a refund is restored
    with its amount named, a batch's legs as transfers; a hold and a void are derived as
    before. A retry that asked for "all", or of a batch, is refused as
    idempotency_key_reused: nothing moves twice."""
    async with db_engine.begin() as connection:
        for model in (LedgerTransaction, LedgerHold, LedgerHoldEvent):
            await connection.execute(update(model).values(idempotency_fingerprint=None))
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    before = await wallets(redis_client)
    refused: dict[str, Refusal] = {}
    for (_, key), (answer, again, _) in workload.keyed.items():
        try:
            replay = await again()
        except Refused as refusal:
            refused[key] = refusal.refusal
            continue
        assert replay == type(answer)(**{**_fields(answer), "replayed": True}), key
    reused = refusals.IDEMPOTENCY_KEY_REUSED
    assert refused == dict.fromkeys(
        ["cap-all", "ref-rest", "batch-1", "batch-3", "batch-name"], reused
    )
    assert await wallets(redis_client) == before
