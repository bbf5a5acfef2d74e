"""The stream writer against real Redis and PostgreSQL: batches, exactly-once storage under
redelivery, crashes, concurrent writers, outages, poison records and retention."""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import persistence.ledger_insert
import service.ledger.writer
from persistence.ledger_insert import insert_isolating, insert_transactions, is_data_error
from service.domain.refusals import Refused
from service.domain.transactions import Transaction
from service.ledger.writer import (
    StreamWriter,
    Unparseable,
    parse_entry,
)
from service.redis import keyspace
from service.redis.keyspace import WRITER_GROUP
from service.redis.money import MoneyScripts
from service.redis.scripts import LuaScript
from service.redis.streams import ensure_consumer_group
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import stream_entries
from tests.support.writer import (
    create_users,
    dead_letters,
    ledger,
    ledger_count,
    pending,
    some_transactions,
    writer_settings,
    xadd,
)

WAIT_S = 5.0


async def stream_ids(redis: RedisClient) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await stream_entries(redis)]


async def wait_for(condition: Callable[[], Awaitable[bool]]) -> None:
    """Polls ``condition`` until it holds; fails after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.01)


async def test_consumer_group_is_created_once(redis_client: RedisClient) -> None:
    await ensure_consumer_group(redis_client, BUCKET)
    await ensure_consumer_group(redis_client, BUCKET)  # BUSYGROUP is not an error

    groups = await redis_client.xinfo_groups(keyspace.txn_stream(BUCKET))
    assert [g["name"] for g in groups] == [WRITER_GROUP.encode()]
    assert groups[0]["last-delivered-id"] == b"0-0"
    assert await redis_client.type(keyspace.txn_stream(BUCKET)) == b"stream"


async def test_writer_stores_every_field_and_acknowledges(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 5)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)

    assert await writer.drain_once() == 5

    rows = await ledger(db_engine)
    entries = await stream_entries(redis_client)
    assert sorted(rows) == [1, 2, 3, 4, 5]
    for entry_id, fields in entries:
        txn = Transaction.from_stream_fields(fields)
        assert rows[txn.txn_id] == {
            "id": txn.txn_id,
            "kind": txn.kind,
            "from_user_id": txn.from_user_id,
            "to_user_id": txn.to_user_id,
            "amount_kopecks": txn.amount_kopecks,
            "created_at": txn.created_at,
            "from_balance_after_kopecks": txn.from_balance_kopecks,
            "to_balance_after_kopecks": txn.to_balance_kopecks,
            "idempotency_key": txn.idempotency_key,
            "stream_entry_id": entry_id.decode(),
            "hold_id": None,
            "refund_of": None,
            "idempotency_fingerprint": None,
        }
    assert rows[1]["idempotency_key"] is not None
    assert rows[4]["kind"] == "transfer"
    assert await pending(redis_client) == {}
    assert (writer.stats.persisted, writer.stats.batches, writer.stats.dead_lettered) == (5, 1, 0)
    assert (writer.stats.rows_inserted, writer.stats.rows_skipped) == (5, 0)
    assert writer.stats.last_batch_lag_ms > 0
    assert writer.stats.last_batch_at_s >= writer.stats.last_read_at_s > time.time() - 60
    assert await writer.drain_once() == 0


async def test_batches_are_bounded_by_the_batch_size(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 7)
    writer = StreamWriter(
        writer_settings(settings, writer_batch_size=3), redis_client, db_engine, BUCKET
    )

    assert [await writer.drain_once() for _ in range(4)] == [3, 3, 1, 0]
    assert await ledger_count(db_engine) == (7, 7)


async def test_inserting_the_same_entries_twice_stores_them_once(
    redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 6)
    entries = [
        (entry_id.decode(), Transaction.from_stream_fields(fields))
        for entry_id, fields in await stream_entries(redis_client)
    ]

    async with db_engine.begin() as connection:
        assert await insert_transactions(connection, entries[:4]) == 4
    async with db_engine.begin() as connection:
        assert await insert_transactions(connection, entries[:4]) == 0
        assert await insert_transactions(connection, entries) == 2
        assert await insert_transactions(connection, entries + entries) == 0
        assert await insert_transactions(connection, []) == 0

    assert await ledger_count(db_engine) == (6, 6)


async def test_claimed_entries_already_stored_are_stored_once(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 6)
    first = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)

    async def lost_ack(*args: Any) -> bool:
        return True

    monkeypatch.setattr(first, "_ack", lost_ack)
    assert await first.drain_once() == 6
    assert await pending(redis_client) == {"writer-a": 6}

    second = StreamWriter(
        writer_settings(settings, writer_consumer_name="writer-b", writer_claim_idle_ms=50),
        redis_client,
        db_engine,
        BUCKET,
    )
    await asyncio.sleep(0.1)
    assert await second.drain_once() == 6  # XAUTOCLAIMed, written again

    assert await ledger_count(db_engine) == (6, 6)
    assert await pending(redis_client) == {}
    assert await dead_letters(redis_client) == {}


async def _run_until(
    writer: StreamWriter, reached: asyncio.Event, stop: asyncio.Event
) -> asyncio.Task[None]:
    task = asyncio.create_task(writer.run(stop))
    async with asyncio.timeout(WAIT_S):
        await reached.wait()
    return task


async def _kill(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_writer_killed_between_commit_and_ack_is_resumed_by_its_successor(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 5)
    doomed = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    reached = asyncio.Event()

    async def hang(*args: Any) -> bool:
        reached.set()
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(doomed, "_ack", hang)
    await _kill(await _run_until(doomed, reached, asyncio.Event()))
    assert await ledger_count(db_engine) == (5, 5)  # committed
    assert await pending(redis_client) == {"writer-a": 5}  # never acknowledged

    await some_transactions(money, users, 1)  # a new entry arrives meanwhile
    successor = StreamWriter(
        writer_settings(settings), redis_client, db_engine, BUCKET
    )  # same name
    assert await successor.drain_once() == 5  # its own pending entries first
    assert await pending(redis_client) == {}
    assert await successor.drain_once() == 1  # then the new one
    assert await ledger_count(db_engine) == (6, 6)
    assert await dead_letters(redis_client) == {}


async def test_writer_killed_between_read_and_commit_is_claimed_by_another(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 5)
    reached = asyncio.Event()

    async def hang(*args: Any) -> int:
        reached.set()
        await asyncio.Event().wait()
        return 0

    monkeypatch.setattr(persistence.ledger_insert, "insert_transactions", hang)
    doomed = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    await _kill(await _run_until(doomed, reached, asyncio.Event()))
    monkeypatch.undo()
    assert await ledger_count(db_engine) == (0, 0)
    assert await pending(redis_client) == {"writer-a": 5}

    other = StreamWriter(
        writer_settings(settings, writer_consumer_name="writer-b", writer_claim_idle_ms=100),
        redis_client,
        db_engine,
        BUCKET,
    )
    assert await other.drain_once() == 0  # not idle long enough yet: not claimed
    await asyncio.sleep(0.15)
    assert await other.drain_once() == 5

    assert await ledger_count(db_engine) == (5, 5)
    assert await pending(redis_client) == {}


async def test_two_writers_under_concurrent_load_store_everything_once(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 20)
    for user_id in users:
        await money.deposit(user_id, 10**9)
    rng = random.Random(1)
    stop = asyncio.Event()
    writers = [
        StreamWriter(
            writer_settings(settings, writer_consumer_name=name, writer_batch_size=16),
            redis_client,
            db_engine,
            BUCKET,
        )
        for name in ("writer-a", "writer-b")
    ]
    tasks = [asyncio.create_task(w.run(stop)) for w in writers]

    async def operation() -> None:
        sender, recipient = rng.sample(users, 2)
        try:
            if rng.random() < 0.3:
                await money.deposit(recipient, rng.randint(1, 10_000))
            else:
                await money.transfer(sender, recipient, rng.randint(1, 10_000))
        except Refused:
            pass

    try:
        for _ in range(8):
            await asyncio.gather(*(operation() for _ in range(50)))
        last_id = int(cast(bytes, await redis_client.get(keyspace.txn_seq(BUCKET))))

        async def caught_up() -> bool:
            return (await ledger_count(db_engine))[0] >= last_id

        await wait_for(caught_up)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*tasks)

    assert await ledger_count(db_engine) == (last_id, last_id)
    assert sorted(await ledger(db_engine)) == list(range(1, last_id + 1))
    assert await pending(redis_client) == {}
    assert sum(w.stats.persisted for w in writers) == last_id
    assert all(w.stats.persisted > 0 for w in writers)
    assert await dead_letters(redis_client) == {}


async def test_postgres_unreachable_means_backoff_and_no_ack_then_catch_up(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 4)
    down = create_async_engine("postgresql+asyncpg://127.0.0.1:1/x")
    try:
        blocked = StreamWriter(writer_settings(settings), redis_client, down, BUCKET)
        stop = asyncio.Event()
        task = asyncio.create_task(blocked.run(stop))

        async def retried() -> bool:
            return blocked.stats.retries >= 3

        await wait_for(retried)
        assert await pending(redis_client) == {"writer-a": 4}
        assert blocked.stats.persisted == 0
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await task  # gives up the batch in hand on stop, unacknowledged
    finally:
        await down.dispose()
    assert await pending(redis_client) == {"writer-a": 4}

    back = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    assert await back.drain_once() == 4
    assert await ledger_count(db_engine) == (4, 4)
    assert await pending(redis_client) == {}


async def test_postgres_errors_retry_the_same_batch_with_backoff(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 4)
    real_insert = persistence.ledger_insert.insert_transactions
    attempts: list[list[str]] = []
    pending_during_failures: list[dict[str, int]] = []

    async def flaky(connection: AsyncConnection, entries: list[tuple[str, Transaction]]) -> int:
        attempts.append([entry_id for entry_id, _ in entries])
        if len(attempts) <= 3:
            pending_during_failures.append(await pending(redis_client))
            raise OperationalError("INSERT", {}, ConnectionResetError("server closed"))
        return await real_insert(connection, entries)

    monkeypatch.setattr(persistence.ledger_insert, "insert_transactions", flaky)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)

    assert await writer.drain_once() == 4

    assert len(attempts) == 4
    assert all(a == attempts[0] for a in attempts)
    assert pending_during_failures == [{"writer-a": 4}] * 3
    assert writer.stats.retries == 3
    assert await ledger_count(db_engine) == (4, 4)
    assert await pending(redis_client) == {}


async def test_a_programming_error_stops_the_writer_instead_of_being_retried(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 3)
    attempts = 0

    async def buggy(connection: AsyncConnection, entries: list[tuple[str, Transaction]]) -> int:
        nonlocal attempts
        attempts += 1
        raise KeyError("a bug, not an outage")

    monkeypatch.setattr(persistence.ledger_insert, "insert_transactions", buggy)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    with pytest.raises(KeyError, match="a bug"):
        await writer.drain_once()
    assert attempts == 1
    assert writer.stats.retries == 0
    # Nothing was acknowledged: the next writer (after the fix) stores all of it.
    assert await pending(redis_client) == {"writer-a": 3}
    monkeypatch.undo()
    assert (
        await StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET).drain_once()
        == 3
    )
    assert await ledger_count(db_engine) == (3, 3)


async def test_redis_lost_the_group_it_is_created_again(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    assert await writer.drain_once() == 0  # creates the group
    await redis_client.xgroup_destroy(keyspace.txn_stream(BUCKET), WRITER_GROUP)
    await some_transactions(money, users, 2)
    assert await writer.drain_once() == 0  # NOGROUP: the group is created again
    assert await writer.drain_once() == 2
    assert await ledger_count(db_engine) == (2, 2)


async def test_redis_errors_back_off_too(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 3)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    real_xack = redis_client.xack
    failures = 0

    async def flaky_xack(*args: Any) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RedisConnectionError("connection reset")
        return await real_xack(*args)

    writer._redis = cast(Any, _Proxy(redis_client, xack=flaky_xack))
    assert await writer.drain_once() == 3
    assert writer.stats.retries == 2
    assert await pending(redis_client) == {}
    assert await ledger_count(db_engine) == (3, 3)


class _Proxy:
    """A Redis client with some methods replaced."""

    def __init__(self, target: RedisClient, **overrides: Any) -> None:
        self._target = target
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name) or getattr(self._target, name)


@pytest.mark.parametrize(
    ("error", "data"),
    [
        (IntegrityError("INSERT", {}, Exception("check violation")), True),
        (DataError("INSERT", {}, Exception("value too long")), True),
        (OperationalError("INSERT", {}, Exception("connection reset")), False),
        (InterfaceError("INSERT", {}, Exception("connection is closed")), False),
        (DBAPIError("INSERT", {}, Exception("gone"), connection_invalidated=True), False),
        (ConnectionRefusedError(111, "refused"), False),
        (OSError("network unreachable"), False),
        (TimeoutError(), False),
    ],
)
def test_data_errors_are_told_from_outages(error: Exception, data: bool) -> None:
    assert is_data_error(error) is data


def test_parse_entry_refuses_what_postgres_cannot_hold() -> None:
    good = {
        b"id": b"7",
        b"kind": b"deposit",
        b"from": b"",
        b"to": b"1",
        b"amount": b"5",
        b"created_at_us": b"1700000000000000",
        b"from_balance": b"",
        b"to_balance": b"5",
        b"idem_key": b"",
    }
    parsed = parse_entry(good)
    assert isinstance(parsed, Transaction)
    assert parsed.txn_id == 7
    for field, value in [
        (b"amount", b"100000000000000000000"),
        (b"created_at_us", b"99999999999999999999"),
        (b"kind", b"refund"),
        (b"id", b"seven"),
    ]:
        with pytest.raises(Unparseable):
            parse_entry({**good, field: value})
    with pytest.raises(Unparseable, match="missing field"):
        parse_entry({k: v for k, v in good.items() if k != b"to"})
    with pytest.raises(Unparseable, match="no longer in the stream"):
        parse_entry({})


async def test_poison_records_are_dead_lettered_and_do_not_block_the_rest(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_users(db_engine, money, 2)
    await money.deposit(1, 100)
    malformed = {"id": "x", "kind": "bogus"}
    malformed_id = await xadd(redis_client, malformed)
    await money.deposit(2, 200)
    base = {"kind": "deposit", "from": "", "amount": "5", "created_at_us": "1700000000000000"}
    base |= {"from_balance": "", "to_balance": "5", "idem_key": ""}
    too_big = {**base, "id": "1000", "to": "1", "amount": str(2 * 10**12)}  # check constraint
    too_big_id = await xadd(redis_client, too_big)
    no_user = {**base, "id": "1001", "to": "77"}  # foreign key
    no_user_id = await xadd(redis_client, no_user)
    long_key = {**base, "id": "1002", "to": "1", "idem_key": "k" * 65}  # varchar(64)
    long_key_id = await xadd(redis_client, long_key)
    await money.transfer(1, 2, 50)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)

    with caplog.at_level(logging.ERROR, logger="wallet.writer"):
        assert await writer.drain_once() == 7

    assert sorted(await ledger(db_engine)) == [1, 2, 3]
    assert await pending(redis_client) == {}
    assert (writer.stats.persisted, writer.stats.dead_lettered) == (3, 4)
    dead = await dead_letters(redis_client)
    assert sorted(dead) == sorted([malformed_id, too_big_id, no_user_id, long_key_id])
    assert dead[malformed_id][b"reason"].startswith(b"unparseable")
    assert b"transactions_amount_range" in dead[too_big_id][b"reason"]
    assert b"foreign key" in dead[no_user_id][b"reason"]
    assert b"value too long" in dead[long_key_id][b"reason"]
    for entry_id, original in [(malformed_id, malformed), (too_big_id, too_big)]:
        assert {
            k.removeprefix(b"field:").decode(): v.decode()
            for k, v in dead[entry_id].items()
            if k.startswith(b"field:")
        } == original
    assert all(entry_id in caplog.text for entry_id in dead)

    await money.deposit(1, 1)  # the stream keeps flowing
    assert await writer.drain_once() == 1
    assert sorted(await ledger(db_engine)) == [1, 2, 3, 4]


async def test_pending_entry_deleted_from_the_stream_is_dead_lettered(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 3)
    await ensure_consumer_group(redis_client, BUCKET)
    await redis_client.xreadgroup(
        WRITER_GROUP, "writer-a", {keyspace.txn_stream(BUCKET): ">"}, count=10
    )
    gone = (await stream_ids(redis_client))[1]
    await redis_client.xdel(keyspace.txn_stream(BUCKET), gone)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)

    assert await writer.drain_once() == 3

    assert sorted(await ledger(db_engine)) == [1, 3]
    dead = await dead_letters(redis_client)
    assert list(dead) == [gone]
    record = dead[gone]
    assert b"no longer in the stream" in record[b"reason"]
    assert await pending(redis_client) == {}


async def test_stop_finishes_the_batch_in_hand(
    settings: Settings,
    redis_client: RedisClient,
    money: MoneyScripts,
    db_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 4)
    stop = asyncio.Event()
    real = persistence.ledger_insert.insert_isolating

    async def stop_midway(*args: Any) -> tuple[int, list[tuple[str, str]]]:
        stop.set()  # SIGTERM arrives while the batch is being written
        return await real(*args)

    monkeypatch.setattr(service.ledger.writer, "insert_isolating", stop_midway)
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    async with asyncio.timeout(WAIT_S):
        await writer.run(stop)

    assert await ledger_count(db_engine) == (4, 4)
    assert await pending(redis_client) == {}
    assert writer.stats.batches == 1


async def test_retention_trims_only_acknowledged_entries_older_than_the_window(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    writer = StreamWriter(
        writer_settings(settings, stream_retention_s=1), redis_client, db_engine, BUCKET
    )
    writer.trim_interval_s = 3600.0  # trims only when called below
    await some_transactions(money, users, 3)
    assert await writer.drain_once() == 3
    old_acked = await stream_ids(redis_client)
    await some_transactions(money, users, 2)
    # A dead writer read these and never acknowledged them.
    await redis_client.xreadgroup(
        WRITER_GROUP, "dead", {keyspace.txn_stream(BUCKET): ">"}, count=10
    )
    old_pending = (await stream_ids(redis_client))[3:]
    await asyncio.sleep(1.1)
    await some_transactions(money, users, 2)
    assert await writer.drain_once() == 2
    young_acked = (await stream_ids(redis_client))[5:]
    await some_transactions(money, users, 1)  # not read by anyone yet
    undelivered = (await stream_ids(redis_client))[7:]
    assert len(old_acked + old_pending + young_acked + undelivered) == 8

    assert await writer.trim_stream() == 3
    assert await stream_ids(redis_client) == old_pending + young_acked + undelivered

    await redis_client.xack(keyspace.txn_stream(BUCKET), WRITER_GROUP, *old_pending)
    assert await writer.trim_stream() == 2
    assert await stream_ids(redis_client) == young_acked + undelivered
    assert await writer.trim_stream() == 0  # young_acked are inside the window

    no_window = StreamWriter(
        writer_settings(settings, stream_retention_s=0), redis_client, db_engine, BUCKET
    )
    await redis_client.xreadgroup(
        WRITER_GROUP, "dead", {keyspace.txn_stream(BUCKET): ">"}, count=10
    )
    # undelivered is now pending: only what precedes it may go.
    assert await no_window.trim_stream() == 2
    assert await stream_ids(redis_client) == undelivered


async def test_the_writer_trims_as_it_goes(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 5)
    writer = StreamWriter(
        writer_settings(settings, stream_retention_s=0), redis_client, db_engine, BUCKET
    )

    assert await writer.drain_once() == 5

    # Everything was acknowledged; the last-delivered entry itself is kept.
    assert len(await stream_ids(redis_client)) == 1
    assert await ledger_count(db_engine) == (5, 5)


async def test_an_id_issued_twice_is_dead_lettered_not_dropped(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 3)  # ids 1..3
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    assert await writer.drain_once() == 3
    delivered_again = await stream_ids(redis_client)
    # Redis loses its counter: ids 2.. are issued again, for other transactions.
    await redis_client.set(keyspace.txn_seq(BUCKET), 1)
    await money.deposit(users[1], 777)  # id 2 again
    await money.deposit(users[1], 888)  # id 3 again
    await money.deposit(users[1], 999)  # id 4, new
    before = await ledger(db_engine)
    assert await writer.drain_once() == 3
    after = await ledger(db_engine)
    assert {i: after[i] for i in before} == before  # the stored ones are untouched
    assert after[4]["amount_kopecks"] == 999
    letters = await dead_letters(redis_client)
    reasons = sorted(r[b"reason"].decode() for r in letters.values())
    assert len(reasons) == 2
    assert all("already in the ledger for another transaction" in r for r in reasons)
    assert sorted(r[b"field:amount"] for r in letters.values()) == [b"777", b"888"]
    # The same entries delivered again are still fine: same transaction, stored once.
    stored = await insert_isolating(
        db_engine,
        [
            (entry_id.decode(), Transaction.from_stream_fields(fields))
            for entry_id, fields in await stream_entries(redis_client)
            if entry_id.decode() in delivered_again
        ],
    )
    assert stored == (0, [])


async def test_the_mark_before_a_replica_wait_needs_the_entries_pending_where_it_runs(
    redis_client: RedisClient,
) -> None:
    """lua/writer_mark.lua: the wait after it confirms only what its server holds, so
    entries read elsewhere (a primary since replaced) are answered "elsewhere", unmarked."""
    stream, mark = keyspace.txn_stream(BUCKET), keyspace.writer_wait(BUCKET)
    await ensure_consumer_group(redis_client, BUCKET)
    entry_id = cast(bytes, await redis_client.xadd(stream, {"kind": "deposit"})).decode()
    script = LuaScript(redis_client, "writer_mark")
    args: list[str | int] = ["w1", 60_000, WRITER_GROUP, entry_id]
    assert await script(keys=[mark, stream], args=args) == b"elsewhere"  # not read yet
    assert not await redis_client.exists(mark)
    await redis_client.xreadgroup(WRITER_GROUP, "w2", {stream: ">"})
    assert await script(keys=[mark, stream], args=args) == b"elsewhere"  # another's
    await redis_client.xclaim(stream, WRITER_GROUP, "w1", 0, [entry_id])
    assert await script(keys=[mark, stream], args=args) == b"ok"
    assert await redis_client.get(mark) == b"w1"
    assert await script(keys=[mark, stream], args=args[:3]) == b"invalid_argument"
