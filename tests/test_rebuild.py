"""persistence/rebuild.py and its Lua scripts against real Redis and PostgreSQL."""

import time
from datetime import timedelta
from typing import cast

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransaction
from service.domain import refusals
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.ledger import rebuild as rebuild_module
from service.ledger import reconcile as reconcile_module
from service.ledger.rebuild import ensure_transaction_counter, format_report, rebuild
from service.ledger.rebuild_errors import RebuildRefused
from service.ledger.reconcile import format_report as format_reconcile
from service.ledger.reconcile import reconcile
from service.redis import keyspace
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts
from service.redis.scripts import load_script_source
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import add_users, balance, lose_redis, persist, refusing, snapshot

TTL_S = 24 * 3600
USERS = list(range(1, 8))


async def ledger_last_id(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.max(LedgerTransaction.id)))).scalar_one())


async def balances(redis: RedisClient) -> dict[int, int]:
    return {u: await balance(redis, u) for u in USERS}


@pytest.fixture
async def history(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    money: MoneyScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[int, int]:
    """Users 1..7 with persisted deposits and transfers, some under idempotency keys;
    small batches so that every loop of rebuild pages. Returns the balances."""
    monkeypatch.setattr(rebuild_module, "BATCH_SIZE", 3)
    monkeypatch.setattr(reconcile_module, "BATCH_SIZE", 3)
    await add_users(db_engine, money, USERS)
    for user_id in USERS:
        await money.deposit(user_id, 10_000 * user_id, idempotency_key=f"dep-{user_id}")
    await money.transfer(7, 1, 3_000, idempotency_key="pay-1")
    await money.transfer(1, 2, 500)
    await money.transfer(6, 5, 1_234, idempotency_key="pay-1")  # one key, two users
    await money.deposit(3, 77)
    await persist(redis_client, db_engine)
    return await balances(redis_client)


async def test_rebuild_restores_what_redis_lost(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    last_id = await ledger_last_id(db_engine)
    await lose_redis(redis_client)

    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)

    assert (report.users, report.wallets_created, report.wallets_updated) == (7, 7, 0)
    assert (report.idempotency_keys_restored, report.idempotency_keys_kept) == (9, 0)
    assert report.ledger_last_txn_id == last_id
    assert "7 wallets restored" in format_report(report)
    assert await balances(redis_client) == history
    check = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert check.ok, format_reconcile(check)
    assert check.users_checked == len(USERS)
    assert int(cast(bytes, await redis_client.get(keyspace.txn_seq(BUCKET)))) >= last_id
    assert report.txn_seqs[0] >= last_id
    groups = await redis_client.xinfo_groups(keyspace.txn_stream(BUCKET))
    assert [g["name"] for g in groups] == [keyspace.WRITER_GROUP.encode()]

    # A new transaction gets an id no stored one has. (Were it to reuse an id, the writer's
    # INSERT ... ON CONFLICT DO NOTHING would silently drop it from the ledger.)
    fresh = await money.deposit(4, 1)
    assert fresh.txn_id > last_id
    assert await persist(redis_client, db_engine) == 1
    assert await ledger_last_id(db_engine) == fresh.txn_id
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok


async def test_transactions_after_a_rebuild_are_stamped_after_the_stored_ones(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    """Redis may come back on a host whose clock is behind the lost one's."""
    ahead_us = int(time.time() * 1_000_000) + 3_600_000_000
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    last = await money.deposit(1, 5)
    await persist(redis_client, db_engine)
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    fresh = await money.deposit(1, 5)
    assert fresh.created_at_us == last.created_at_us + 1 == ahead_us + 2


async def test_ids_acknowledged_but_lost_with_redis_are_never_issued_again(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    """Transactions acknowledged just before Redis is lost, not yet in the ledger, are lost
    with it; their ids, which clients hold in 201s, must never name another transaction."""
    acknowledged = [await money.deposit(1, 11), await money.transfer(2, 3, 22)]
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    fresh = [await money.deposit(4, 1), await money.transfer(4, 5, 1)]
    assert min(f.txn_id for f in fresh) > max(a.txn_id for a in acknowledged)


async def test_the_new_epoch_is_above_the_ledgers_ids_even_if_none_was_recorded(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    """Ids an older version issued (all in epoch 0) were never recorded as an epoch."""
    async with db_engine.begin() as connection:
        await connection.execute(text("UPDATE txn_id_epoch SET next_epoch = 0"))
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (report.txn_id_epochs, report.txn_seqs) == ((1,), (TXN_IDS_PER_EPOCH,))


async def test_retries_with_recent_keys_replay_instead_of_moving_money(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    original = await redis_client.hgetall(keyspace.idempotency(7, "pay-1"))
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)

    assert await redis_client.hgetall(keyspace.idempotency(7, "pay-1")) == original
    seq_before = await redis_client.get(keyspace.txn_seq(BUCKET))

    deposit = await money.deposit(3, 30_000, idempotency_key="dep-3")
    sent = await money.transfer(7, 1, 3_000, idempotency_key="pay-1")
    other = await money.transfer(6, 5, 1_234, idempotency_key="pay-1")
    assert [deposit.replayed, sent.replayed, other.replayed] == [True, True, True]
    assert sent.txn_id != other.txn_id
    assert await balances(redis_client) == history
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == seq_before
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.transfer(7, 1, 3_001, idempotency_key="pay-1")
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.deposit(7, 3_000, idempotency_key="pay-1")


async def shift_back(engine: AsyncEngine, user_id: int, key: str, seconds: int) -> int:
    """Makes the ledger row with this key look ``seconds`` older; its new created_at_us."""
    row = LedgerTransaction
    async with engine.begin() as connection:
        created_at = (
            await connection.execute(
                update(row)
                .where(row.idempotency_key == key, row.to_user_id == user_id)
                .values(created_at=row.created_at - timedelta(seconds=seconds))
                .returning(row.created_at)
            )
        ).scalar_one()
    return int(created_at.timestamp()) * 1_000_000 + created_at.microsecond


async def test_restored_keys_expire_when_the_originals_would_have(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    await shift_back(db_engine, 2, "dep-2", TTL_S + 1)
    created_at_us = await shift_back(db_engine, 4, "dep-4", 3_600)
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert report.idempotency_keys_restored == 8

    record = await redis_client.hgetall(keyspace.idempotency(4, "dep-4"))
    assert record[b"created_at_us"] == str(created_at_us).encode()
    ttl_ms = await redis_client.pttl(keyspace.idempotency(4, "dep-4"))
    assert (TTL_S - 3_600 - 5) * 1_000 <= ttl_ms <= (TTL_S - 3_600) * 1_000
    assert (await money.deposit(4, 40_000, idempotency_key="dep-4")).replayed

    assert not await redis_client.exists(keyspace.idempotency(2, "dep-2"))
    again = await money.deposit(2, 20_000, idempotency_key="dep-2")
    assert not again.replayed
    assert await balance(redis_client, 2) == history[2] + 20_000


async def test_of_two_uses_of_one_key_the_newer_is_restored(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    # dep-1 was used, expired (a shorter TTL once, say) and was used again for another amount.
    await shift_back(db_engine, 1, "dep-1", TTL_S // 2)
    await redis_client.delete(keyspace.idempotency(1, "dep-1"))
    newer = await money.deposit(1, 555, idempotency_key="dep-1")
    await persist(redis_client, db_engine)
    await lose_redis(redis_client)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (report.idempotency_keys_restored, report.idempotency_keys_kept) == (9, 1)
    retry = await money.deposit(1, 555, idempotency_key="dep-1")
    assert (retry.txn_id, retry.created_at_us, retry.replayed) == (
        newer.txn_id,
        newer.created_at_us,
        True,
    )
    with refusing(refusals.IDEMPOTENCY_KEY_REUSED):
        await money.deposit(1, 10_000, idempotency_key="dep-1")
    assert await balance(redis_client, 1) == history[1] + 555


async def test_rebuild_refuses_while_the_stream_holds_unpersisted_entries(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    await money.deposit(5, 1)  # accepted, in the stream, not yet in the ledger
    before = await snapshot(redis_client)
    with pytest.raises(RebuildRefused, match="transaction 12") as refused:
        await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert "writer" in str(refused.value)
    assert await snapshot(redis_client) == before
    await persist(redis_client, db_engine)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (report.wallets_created, report.wallets_updated) == (0, 0)
    assert report.idempotency_keys_kept == 9
    assert await balance(redis_client, 5) == history[5] + 1


async def test_rebuild_refuses_while_the_stream_of_a_version_before_buckets_exists(
    redis_client: RedisClient, db_engine: AsyncEngine, history: dict[int, int]
) -> None:
    """An upgrade that skipped draining the old stream: its transactions may be in no
    ledger, and would be lost from the balances a rebuild writes."""
    await redis_client.xadd(keyspace.LEGACY_TXN_STREAM, {"id": "99", "kind": "deposit"})
    before = await snapshot(redis_client)
    with pytest.raises(RebuildRefused, match="version before buckets"):
        await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert await snapshot(redis_client) == before
    await redis_client.delete(keyspace.LEGACY_TXN_STREAM)
    assert (await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)).users > 0


async def test_rebuild_over_a_live_redis_corrects_balances_and_starts_a_new_epoch(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts, history: dict[int, int]
) -> None:
    """A Redis that came back with older data (an AOF cut short) may hold a counter below
    ids it issued: the rebuild moves it to a new epoch all the same."""
    await redis_client.hincrby(keyspace.user(3), "balance_kopecks", 5)
    await redis_client.set(keyspace.txn_seq(BUCKET), 1_000)
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (report.wallets_created, report.wallets_updated) == (0, 1)
    # fresh_database handed epoch 0 out to the counter the tests start with.
    assert (report.txn_id_epochs, report.txn_seqs) == ((1,), (TXN_IDS_PER_EPOCH,))
    assert "from epochs 1," in format_report(report)
    assert await balances(redis_client) == history
    assert (await money.deposit(1, 1)).txn_id == TXN_IDS_PER_EPOCH + 1
    # Each rebuild takes an epoch of its own.
    await persist(redis_client, db_engine)
    assert (await rebuild(redis_client, db_engine, TTL_S)).txn_seqs == (2 * TXN_IDS_PER_EPOCH,)


async def test_rebuild_with_an_empty_ledger(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)
    assert (report.users, report.ledger_last_txn_id, report.txn_seqs) == (0, 0, (0,))
    assert await redis_client.xinfo_groups(keyspace.txn_stream(BUCKET)) != []


RESTORE_WALLET_KEYS = [keyspace.txn_seq(BUCKET), keyspace.user(1), keyspace.pending_holds(1)]
NOW_US = str(int(time.time() * 1_000_000))
LATER_US = str(int(NOW_US) + 3_600_000_000)


def wallet_case(*args: str) -> tuple[str, list[str], list[str]]:
    return "restore_wallet", RESTORE_WALLET_KEYS, list(args)


def idempotency_case(
    position: int, value: str, key_owner: int = 1, key: str = "k"
) -> tuple[str, list[str], list[str]]:
    """restore_idempotency with valid arguments but ARGV[position + 1] = value."""
    args = ["1", "k", "deposit", NOW_US, "60", "", "3", NOW_US, "5"]
    args[position] = value
    return "restore_idempotency", [keyspace.idempotency(key_owner, key)], args


def idempotency_facts(kind: str, *facts: str) -> tuple[str, list[str], list[str]]:
    args = ["1", "k", kind, NOW_US, "60", "", *facts]
    return "restore_idempotency", [keyspace.idempotency(1, "k")], args


def hold_case(
    position: int, value: str, key: str = keyspace.hold(BUCKET, 9)
) -> tuple[str, list[str], list[str]]:
    args = ["9", "1", "2", "5", NOW_US, LATER_US, "60", ""]
    args[position] = value
    return "restore_hold", [key, keyspace.holds_due(BUCKET)], args


@pytest.mark.parametrize(
    ("script", "keys", "args"),
    [
        wallet_case("1", "-1", "0", "0", "0"),
        wallet_case("1", "1000000000000001", "0", "0", "0"),
        wallet_case("1", "01", "0", "0", "0"),
        wallet_case("1", "1.5", "0", "0", "0"),
        wallet_case("1", "5", "-3", "0", "0"),
        wallet_case("1", "5", "1e3", "0", "0"),
        wallet_case("1", "5", "0", "0"),
        wallet_case("1", "5", "0", "6", "0", "9", "2", "6", LATER_US),  # held above balance
        wallet_case("1", "5", "0", "3", "0", "9", "2", "2", LATER_US),  # held is not the sum
        wallet_case("1", "5", "0", "3", "0", "9", "1", "3", LATER_US),  # a hold to oneself
        wallet_case("1", "5", "0", "3", "0", "9", "2", "3"),  # a hold without its expiry
        wallet_case("1", "1000000000000000", "0", "0", "1"),  # over the ceiling with incoming
        (
            "restore_wallet",
            [keyspace.txn_seq(BUCKET), keyspace.user(2), keyspace.pending_holds(2)],
            ["1", "5", "0", "0", "0"],
        ),
        ("restore_wallet", [keyspace.txn_seq(BUCKET), keyspace.user(1)], ["1", "5", "0", "0", "0"]),
        (
            "restore_wallet",
            [keyspace.user(1), keyspace.txn_seq(BUCKET), keyspace.pending_holds(1)],
            ["1", "5", "0", "0", "0"],
        ),
        idempotency_case(2, "withdrawal"),
        idempotency_case(8, "0"),
        idempotency_case(8, "1000000000001"),
        idempotency_case(6, "0"),
        idempotency_case(7, "-1"),
        idempotency_case(4, "0"),
        idempotency_case(3, "0"),
        idempotency_case(5, "x" * 65),
        idempotency_case(1, "j"),  # not the key in KEYS[1]
        idempotency_case(0, "1", key_owner=2),
        idempotency_case(1, "k\n", key="k\n"),
        ("restore_idempotency", [keyspace.idempotency(1, "k")], ["1", "k", "deposit"]),
        idempotency_facts("deposit", "3", NOW_US, "5", "5"),  # one fact too many
        idempotency_facts("transfer", "3", NOW_US, "1", "5"),  # to oneself
        idempotency_facts("batch", "3", NOW_US, "2", "2", "5"),  # one leg of two
        idempotency_facts("batch", "3", NOW_US, "1", "1", "5"),  # a leg to oneself
        idempotency_facts("batch", "3", NOW_US, "0"),
        idempotency_facts("hold", "3", NOW_US, str(int(NOW_US) + 60_500_000), "2", "5"),
        idempotency_facts("hold", "3", NOW_US, str(int(NOW_US) + 59_000_000), "2", "5"),
        idempotency_facts("hold", "3", NOW_US, LATER_US, "1", "5"),  # to oneself
        idempotency_facts("capture", "3", NOW_US, "2", "1", "5"),  # from oneself
        idempotency_facts("void", "2", "1", "5", NOW_US, LATER_US),  # of one's own hold
        idempotency_facts("refund", "3", NOW_US, "2"),
        hold_case(1, "2"),  # to oneself
        hold_case(3, "0"),
        hold_case(5, NOW_US),  # expires when made
        hold_case(6, "0"),
        hold_case(0, "8"),  # not the hold in KEYS[1]
        (
            "restore_hold",
            [keyspace.hold(BUCKET, 9)],
            ["9", "1", "2", "5", NOW_US, LATER_US, "60", ""],
        ),
        hold_case(7, "t" * 22),  # a token without its request's record
        (  # the record of another payer's request
            "restore_hold",
            [
                keyspace.hold(BUCKET, 9),
                keyspace.holds_due(BUCKET),
                keyspace.request_outcome(2, "t" * 22),
            ],
            ["9", "1", "2", "5", NOW_US, LATER_US, "60", "t" * 22],
        ),
    ],
)
async def test_restore_scripts_refuse_malformed_arguments_and_write_nothing(
    redis_client: RedisClient, money: MoneyScripts, script: str, keys: list[str], args: list[str]
) -> None:
    await money.register_user(1)
    await money.deposit(1, 1_000)
    before = await snapshot(redis_client)
    reply = await redis_client.eval(load_script_source(script), len(keys), *keys, *args)
    assert reply[0] == b"invalid_argument"
    assert await snapshot(redis_client) == before


async def test_restore_idempotency_outcomes(redis_client: RedisClient) -> None:
    source = load_script_source("restore_idempotency")
    key = keyspace.idempotency(1, "k")

    async def restore(created_at_us: int, txn_id: str = "3") -> bytes:
        at = str(created_at_us)
        args = ["1", "k", "transfer", at, "60", "", txn_id, at, "2", "5"]
        return cast(list[bytes], await redis_client.eval(source, 1, key, *args))[0]

    now_us = int(time.time() * 1_000_000)
    assert await restore(now_us - 61_000_000) == b"expired"
    assert not await redis_client.exists(key)
    assert await restore(now_us - 30_000_000) == b"restored"
    assert 25_000 <= await redis_client.pttl(key) <= 30_000
    assert await redis_client.hgetall(key) == {
        b"fingerprint": b"transfer:2:5",
        b"outcome": b"ok",
        b"txn_id": b"3",
        b"created_at_us": str(now_us - 30_000_000).encode(),
    }
    assert await restore(now_us, txn_id="4") == b"exists"
    assert await redis_client.hget(key, "txn_id") == b"3"


@pytest.mark.parametrize(
    ("kind", "facts", "fingerprint"),
    [
        ("capture", ["3", NOW_US, "2", "2", "5"], "capture:2:6"),
        ("capture", ["3", NOW_US, "2", "2", "5"], "capture:7:all"),
        ("refund", ["3", NOW_US, "2", "5"], "refund:2:4"),
        ("refund", ["3", NOW_US, "2", "5"], "transfer:2:5"),
        ("transfer", ["3", NOW_US, "2", "5"], "transfer:2:6"),
        ("batch", ["3", NOW_US, "1", "2", "5"], "transfer:2:5"),  # a transfer's, not a batch's
        ("void", ["2", "2", "5", NOW_US, LATER_US], "void:3"),
    ],
)
async def test_restore_idempotency_refuses_a_fingerprint_the_facts_do_not_give(
    redis_client: RedisClient, kind: str, facts: list[str], fingerprint: str
) -> None:
    key = keyspace.idempotency(1, "k")
    args = ["1", "k", kind, NOW_US, "60", fingerprint, *facts]
    reply = await redis_client.eval(load_script_source("restore_idempotency"), 1, key, *args)
    assert reply == [b"fingerprint_mismatch"]
    assert not await redis_client.exists(key)


async def test_the_counter_is_started_only_for_an_empty_ledger(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    # Nothing in the ledger: the counter starts at a new epoch (ids may have been issued,
    # and lost, before any reached the ledger).
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    assert await ensure_transaction_counter(redis_client, db_engine)
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()
    assert await ensure_transaction_counter(redis_client, db_engine)  # in place: unchanged
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()
    await add_users(db_engine, money, USERS)
    await money.deposit(USERS[0], 100)
    await persist(redis_client, db_engine)
    await redis_client.delete(keyspace.txn_seq(BUCKET))  # Redis lost, the ledger has a transaction
    assert not await ensure_transaction_counter(redis_client, db_engine)
    assert not await redis_client.exists(keyspace.txn_seq(BUCKET))
    await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(2 * TXN_IDS_PER_EPOCH).encode()


async def test_rebuild_of_an_empty_ledger_starts_the_counter(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    await lose_redis(redis_client)
    await rebuild(redis_client, db_engine, idempotency_ttl_s=3600)
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()


async def test_rebuild_of_several_buckets(
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    money: MoneyScripts,
    settings: Settings,
    several_buckets: int,
) -> None:
    """User u in bucket u % 3: every bucket's wallets, holds and keys come back, and each
    counter starts in an epoch of its own, above every stored id."""
    user_ids = list(range(1, 10))
    await add_users(db_engine, money, user_ids)
    for user_id in user_ids:
        await money.deposit(user_id, 1_000 * user_id, idempotency_key=f"dep-{user_id}")
    await money.transfer(4, 1, 300)
    await money.transfer(5, 8, 200, idempotency_key="pay")
    await HoldScripts(redis_client, settings).create(6, 3, 50, 3_600)
    await persist(redis_client, db_engine)
    before = {u: await balance(redis_client, u) for u in user_ids}
    last_id = await ledger_last_id(db_engine)
    await lose_redis(redis_client)

    report = await rebuild(redis_client, db_engine, idempotency_ttl_s=TTL_S)

    assert (report.users, report.holds_restored, report.idempotency_keys_restored) == (9, 1, 10)
    assert {u: await balance(redis_client, u) for u in user_ids} == before
    check = await reconcile(redis_client, db_engine, wait_for_writer_s=1)
    assert check.ok, format_reconcile(check)
    epochs = [seq // TXN_IDS_PER_EPOCH for seq in report.txn_seqs]
    assert len(set(epochs)) == several_buckets
    assert min(report.txn_seqs) > last_id
    replayed = await money.transfer(5, 8, 200, idempotency_key="pay")
    assert replayed.replayed
    fresh = [await money.deposit(u, 1) for u in (1, 2, 3)]
    assert [f.txn_id // TXN_IDS_PER_EPOCH for f in fresh] == [epochs[1], epochs[2], epochs[0]]
    assert await persist(redis_client, db_engine) == 3
    assert (await reconcile(redis_client, db_engine, wait_for_writer_s=1)).ok
