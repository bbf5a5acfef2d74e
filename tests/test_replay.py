"""``wallet replay``: re-driving retained stream records into PostgreSQL."""

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger.replay import parse_from_id, replay
from service.ledger.writer import StreamWriter
from service.redis import keyspace
from service.redis.keyspace import WRITER_GROUP
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import stream_entries
from tests.support.writer import (
    create_users,
    ledger,
    ledger_count,
    pending,
    some_transactions,
    writer_settings,
    xadd,
)


async def delete_rows(engine: AsyncEngine, ids: list[int]) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM transactions WHERE id = ANY(:ids)"), {"ids": ids}
        )


async def group_state(redis: RedisClient) -> tuple[Any, Any]:
    return await redis.xinfo_groups(keyspace.txn_stream(BUCKET)), await redis.xpending(
        keyspace.txn_stream(BUCKET), WRITER_GROUP
    )


async def stored_ledger(
    settings: Settings, redis: RedisClient, money: MoneyScripts, engine: AsyncEngine, count: int
) -> dict[int, dict[str, Any]]:
    """``count`` transactions, drained into the ledger by a writer; the ledger's rows."""
    users = await create_users(engine, money, 3)
    await some_transactions(money, users, count)
    writer = StreamWriter(writer_settings(settings), redis, engine, BUCKET)
    assert await writer.drain_once() == count
    return await ledger(engine)


async def test_replay_from_a_transaction_id_restores_deleted_rows(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    before = await stored_ledger(settings, redis_client, money, db_engine, 12)
    await delete_rows(db_engine, [2, 5, 6, 11])
    chunked = settings.model_copy(update={"writer_batch_size": 4})

    assert await replay(chunked, redis_client, db_engine, BUCKET, "5") == 3  # 5, 6 and 11; not 2

    after = await ledger(db_engine)
    assert sorted(after) == [i for i in range(1, 13) if i != 2]
    assert after == {i: row for i, row in before.items() if i != 2}
    assert await replay(chunked, redis_client, db_engine, BUCKET, "1") == 1  # 2; nothing twice
    assert await ledger(db_engine) == before
    assert await replay(chunked, redis_client, db_engine, BUCKET, "1") == 0


async def test_replay_from_a_stream_id(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    before = await stored_ledger(settings, redis_client, money, db_engine, 8)
    await delete_rows(db_engine, [3, 6, 8])
    start = before[6]["stream_entry_id"]

    assert await replay(settings, redis_client, db_engine, BUCKET, start) == 2

    assert sorted(await ledger(db_engine)) == [1, 2, 4, 5, 6, 7, 8]


async def test_replay_beyond_the_stream_inserts_nothing(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    await stored_ledger(settings, redis_client, money, db_engine, 3)
    await delete_rows(db_engine, [1, 2, 3])

    assert await replay(settings, redis_client, db_engine, BUCKET, "4") == 0
    assert await replay(settings, redis_client, db_engine, BUCKET, "99999999999999-0") == 0
    assert await ledger_count(db_engine) == (0, 0)


async def test_replay_leaves_the_consumer_group_alone(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    await stored_ledger(settings, redis_client, money, db_engine, 3)
    await some_transactions(money, [1, 2, 3], 4)  # not yet read by the writer
    await redis_client.xreadgroup(
        WRITER_GROUP, "someone", {keyspace.txn_stream(BUCKET): ">"}, count=2
    )
    state = await group_state(redis_client)

    assert await replay(settings, redis_client, db_engine, BUCKET, "1") == 4

    assert await group_state(redis_client) == state
    assert await pending(redis_client) == {"someone": 2}
    writer = StreamWriter(writer_settings(settings), redis_client, db_engine, BUCKET)
    assert await writer.drain_once() == 2  # the writer still gets them, stores nothing twice
    assert await ledger_count(db_engine) == (7, 7)


async def test_replay_skips_malformed_entries(
    settings: Settings, redis_client: RedisClient, money: MoneyScripts, db_engine: AsyncEngine
) -> None:
    users = await create_users(db_engine, money, 2)
    await some_transactions(money, users, 2)
    await xadd(redis_client, {"id": "3", "kind": "bogus"})
    await xadd(redis_client, {"no": "id"})
    await some_transactions(money, users, 2)
    assert len(await stream_entries(redis_client)) == 6

    assert await replay(settings, redis_client, db_engine, BUCKET, "2") == 3

    assert sorted(await ledger(db_engine)) == [2, 3, 4]


@pytest.mark.parametrize(
    "from_id",
    [
        "",
        "0",
        "-1",
        "007",
        "abc",
        "1.5",
        "1e3",
        " 5",
        "5 ",
        "\u0663",  # ARABIC-INDIC DIGIT THREE
        "1-",
        "-0",
        "1-2-3",
        "1700000000000-*",
        "18446744073709551616-0",
        "9223372036854775808",
    ],
)
def test_malformed_from_id_is_refused(from_id: str) -> None:
    with pytest.raises(ValueError, match="transaction id"):
        parse_from_id(from_id)


def test_from_id_forms() -> None:
    assert parse_from_id("42") == (None, 42)
    assert parse_from_id("1700000000000-0") == ("1700000000000-0", None)
    assert parse_from_id("0-1") == ("0-1", None)
    assert parse_from_id("18446744073709551615-18446744073709551615")[0] is not None


async def test_replay_refuses_a_malformed_from_id(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    with pytest.raises(ValueError, match="--from must be"):
        await replay(settings, redis_client, db_engine, BUCKET, "yesterday")
