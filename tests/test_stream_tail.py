"""lua/stream_tail.lua against real Redis: which entries may not be persisted yet."""

from typing import cast

import pytest

from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.scripts import load_script_source
from service.redis.stream_tail import unpersisted_tail
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.records import SECOND, T0, Book, append

Delivered = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


async def deliver(redis: RedisClient, count: int) -> list[bytes]:
    reply = cast(
        Delivered,
        await redis.xreadgroup(
            keyspace.WRITER_GROUP, "w1", {keyspace.txn_stream(BUCKET): ">"}, count=count
        ),
    )
    return [entry_id for entry_id, _ in reply[0][1]]


@pytest.fixture
async def five_transactions(money: MoneyScripts) -> None:
    for user_id in (1, 2, 3):
        await money.register_user(user_id)
    await money.deposit(1, 1_000)  # 1
    await money.deposit(2, 1_000)  # 2
    await money.transfer(1, 2, 10)  # 3
    await money.transfer(2, 3, 20)  # 4
    await money.deposit(3, 5)  # 5


async def test_without_a_group_the_whole_stream_is_unpersisted(
    redis_client: RedisClient, five_transactions: None
) -> None:
    tail = await unpersisted_tail(redis_client, BUCKET, max_entries=100)
    assert [t.txn_id for t in tail.transactions] == [1, 2, 3, 4, 5]
    assert not tail.overflow
    mine = await unpersisted_tail(redis_client, BUCKET, max_entries=100, user_id=3)
    assert [t.txn_id for t in mine.transactions] == [4, 5]


async def test_tail_starts_at_the_oldest_pending_entry(
    redis_client: RedisClient, five_transactions: None
) -> None:
    await redis_client.xgroup_create(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP, id="0")
    ids = await deliver(redis_client, 3)  # 1..3 delivered, pending
    await redis_client.xack(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP, ids[0], ids[2])
    tail = await unpersisted_tail(redis_client, BUCKET, max_entries=100)
    # 2 is still pending; 3 is acknowledged but newer than 2, so it is returned too.
    assert [t.txn_id for t in tail.transactions] == [2, 3, 4, 5]
    await redis_client.xack(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP, ids[1])
    tail = await unpersisted_tail(redis_client, BUCKET, max_entries=100)
    assert [t.txn_id for t in tail.transactions] == [4, 5]
    acked = await deliver(redis_client, 10)
    await redis_client.xack(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP, *acked)
    assert (await unpersisted_tail(redis_client, BUCKET, max_entries=100)).transactions == []


async def test_tail_reports_overflow(redis_client: RedisClient, five_transactions: None) -> None:
    tail = await unpersisted_tail(redis_client, BUCKET, max_entries=4)
    assert tail.overflow
    assert [t.txn_id for t in tail.transactions] == [1, 2, 3, 4]


async def test_empty_stream_and_bad_arguments(redis_client: RedisClient) -> None:
    assert (await unpersisted_tail(redis_client, BUCKET, max_entries=10)).transactions == []
    script = load_script_source("stream_tail")
    for args in (["ledger-writer", "0", ""], ["ledger-writer", "10", "01"], ["", "10", ""]):
        reply = await redis_client.eval(script, 1, keyspace.txn_stream(BUCKET), *args)
        assert reply == [b"invalid_argument"]


async def test_hold_records_are_in_the_tail_and_unparseable_ones_only_counted(
    redis_client: RedisClient,
) -> None:
    book = Book()
    created = book.hold(1, 2, 300, T0, T0 + SECOND)
    ids = await append(
        redis_client,
        book.deposit(1, 1_000, T0),
        created,
        {"kind": "hold_voided", "hold": "x"},
        book.end("hold_voided", 1, T0 + 1),
        book.capture(1, 300, T0 + 2) | {"to": "3"},
    )
    tail = await unpersisted_tail(redis_client, BUCKET, max_entries=100)
    assert [type(r).__name__ for r in tail.records] == [
        "Transaction",
        "HoldEvent",
        "HoldEvent",
        "Transaction",
    ]
    assert [e.kind for e in tail.hold_events] == ["hold_created", "hold_voided"]
    assert [t.hold_id for t in tail.transactions] == [None, 1]
    assert tail.unparseable == (ids[2],)
    mine = await unpersisted_tail(redis_client, BUCKET, max_entries=100, user_id=2)
    assert [e.kind for e in mine.hold_events] == ["hold_created", "hold_voided"]
    assert mine.transactions == []
    first = await unpersisted_tail(redis_client, BUCKET, max_entries=1, user_id=2)
    assert first.describe_first() is None  # the deposit is user 1's
    assert first.overflow
