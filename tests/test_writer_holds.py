"""The writer and replay with the records of holds, captures and refunds (docs/holds.md
"Stream records"), written by hand: stored once however often delivered, a different record
under a stored key dead-lettered, malformed ones dead-lettered."""

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_isolating
from service.domain.holds import HoldEvent
from service.domain.times import datetime_from_us
from service.ledger.replay import replay
from service.ledger.writer import StreamWriter, Unparseable, parse_entry
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.helpers import stream_entries
from tests.support.records import (
    SECOND,
    T0,
    Book,
    add_ledger_users,
    append,
    hold_event_rows,
    hold_rows,
)
from tests.support.writer import dead_letters, ledger, pending, writer_settings


@pytest.fixture
async def users(db_engine: AsyncEngine) -> None:
    await add_ledger_users(db_engine, 1, 2, 3)


def b(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


async def drain(settings: Settings, redis: RedisClient, engine: AsyncEngine) -> StreamWriter:
    writer = StreamWriter(writer_settings(settings), redis, engine, BUCKET)
    while await writer.drain_once():
        pass
    return writer


async def test_holds_their_ends_captures_and_refunds_are_stored_with_every_field(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    book = Book()
    records = [
        book.deposit(1, 10_000, T0),  # 1
        book.hold(1, 2, 3_000, T0 + 1, T0 + 100 * SECOND, "h-1", "hold:2:3000:99"),  # hold 2
        book.hold(1, 3, 1_000, T0 + 2, T0 + 100 * SECOND),  # hold 3
        book.hold(1, 2, 500, T0 + 3, T0 + 5 * SECOND),  # hold 4
        book.capture(2, 2_500, T0 + 4, idem_key="c-1", idem_fp="capture:2:2500"),  # 5
        book.end("hold_voided", 3, T0 + 5, idem_key="v-1", idem_fp="void:3"),
        book.end("hold_expired", 4, T0 + 5 * SECOND),
        book.refund(2, 1, 1_000, T0 + 6, refund_of=5, idem_key="r-1", idem_fp="refund:5:all"),
    ]
    entry_ids = await append(redis_client, *records)

    writer = await drain(settings, redis_client, db_engine)

    assert (writer.stats.persisted, writer.stats.dead_lettered) == (8, 0)
    # Nine rows: the capture is a transaction and its "captured" event.
    assert (writer.stats.rows_inserted, writer.stats.rows_skipped) == (9, 0)
    assert await pending(redis_client) == {}
    txns = await ledger(db_engine)
    assert sorted(txns) == [1, 5, 6]
    assert (txns[5]["kind"], txns[5]["hold_id"], txns[5]["refund_of"]) == ("transfer", 2, None)
    assert (txns[6]["kind"], txns[6]["hold_id"], txns[6]["refund_of"]) == ("refund", None, 5)
    assert (txns[5]["idempotency_fingerprint"], txns[6]["idempotency_fingerprint"]) == (
        "capture:2:2500",
        "refund:5:all",
    )
    assert txns[1]["idempotency_fingerprint"] is None
    assert txns[6]["from_balance_after_kopecks"] == 1_500
    assert txns[6]["to_balance_after_kopecks"] == 8_500
    assert await hold_rows(db_engine) == {
        2: {
            "id": 2,
            "from_user_id": 1,
            "to_user_id": 2,
            "amount_kopecks": 3_000,
            "created_at": datetime_from_us(T0 + 1),
            "expires_at": datetime_from_us(T0 + 100 * SECOND),
            "idempotency_key": "h-1",
            "stream_entry_id": entry_ids[1],
            "idempotency_fingerprint": "hold:2:3000:99",
        },
        3: {
            "id": 3,
            "from_user_id": 1,
            "to_user_id": 3,
            "amount_kopecks": 1_000,
            "created_at": datetime_from_us(T0 + 2),
            "expires_at": datetime_from_us(T0 + 100 * SECOND),
            "idempotency_key": None,
            "stream_entry_id": entry_ids[2],
            "idempotency_fingerprint": None,
        },
        4: {
            "id": 4,
            "from_user_id": 1,
            "to_user_id": 2,
            "amount_kopecks": 500,
            "created_at": datetime_from_us(T0 + 3),
            "expires_at": datetime_from_us(T0 + 5 * SECOND),
            "idempotency_key": None,
            "stream_entry_id": entry_ids[3],
            "idempotency_fingerprint": None,
        },
    }
    assert await hold_event_rows(db_engine) == {
        2: {
            "hold_id": 2,
            "event": "captured",
            "at": datetime_from_us(T0 + 4),
            "amount_kopecks": 2_500,
            "transaction_id": 5,
            "idempotency_key": "c-1",
            "stream_entry_id": entry_ids[4],
            "idempotency_fingerprint": "capture:2:2500",
        },
        3: {
            "hold_id": 3,
            "event": "voided",
            "at": datetime_from_us(T0 + 5),
            "amount_kopecks": 1_000,
            "transaction_id": None,
            "idempotency_key": "v-1",
            "stream_entry_id": entry_ids[5],
            "idempotency_fingerprint": "void:3",
        },
        4: {
            "hold_id": 4,
            "event": "expired",
            "at": datetime_from_us(T0 + 5 * SECOND),
            "amount_kopecks": 500,
            "transaction_id": None,
            "idempotency_key": None,
            "stream_entry_id": entry_ids[6],
            "idempotency_fingerprint": None,
        },
    }


async def test_every_record_delivered_again_is_stored_once(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    book = Book()
    records = [
        book.deposit(1, 10_000, T0),
        book.hold(1, 2, 3_000, T0 + 1, T0 + 100 * SECOND),
        book.hold(1, 3, 1_000, T0 + 2, T0 + 100 * SECOND),
        book.capture(2, 3_000, T0 + 3),
        book.end("hold_expired", 3, T0 + 100 * SECOND),
    ]
    await append(redis_client, *records)
    first = await drain(settings, redis_client, db_engine)
    assert (first.stats.rows_inserted, first.stats.rows_skipped) == (6, 0)
    before = (await ledger(db_engine), await hold_rows(db_engine), await hold_event_rows(db_engine))
    entries = [(i.decode(), parse_entry(f)) for i, f in await stream_entries(redis_client)]

    assert await insert_isolating(db_engine, entries) == (0, [])
    assert await insert_isolating(db_engine, entries + entries) == (0, [])
    # The same records appended again (a script's record seen twice): stored once, no letter.
    await append(redis_client, *records[1:])
    writer = await drain(settings, redis_client, db_engine)

    assert writer.stats.dead_lettered == 0
    # Two holds, the capture's transaction and event, the expiry: all in the ledger already.
    assert (writer.stats.rows_inserted, writer.stats.rows_skipped) == (0, 5)
    after = (await ledger(db_engine), await hold_rows(db_engine), await hold_event_rows(db_engine))
    assert after == before
    assert await dead_letters(redis_client) == {}


async def test_a_different_record_under_a_stored_key_is_dead_lettered(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    book = Book()
    created = book.hold(1, 2, 3_000, T0 + 1, T0 + 100 * SECOND)  # hold 1
    other = book.hold(1, 2, 700, T0 + 2, T0 + 100 * SECOND)  # hold 2
    await append(
        redis_client,
        book.deposit(1, 10_000, T0),  # 3
        created,
        other,
        book.capture(1, 3_000, T0 + 3),  # 4
        book.end("hold_voided", 2, T0 + 4),
    )
    await drain(settings, redis_client, db_engine)
    before = (await hold_rows(db_engine), await hold_event_rows(db_engine))

    conflicting = {
        "another hold under hold id 1": dict(created, amount="2999"),
        "hold 1 voided after its capture": book.end("hold_voided", 1, T0 + 5),
        "hold 2 expired after its void": book.end("hold_expired", 2, T0 + 100 * SECOND),
        "a second capture of hold 2": book.capture(2, 700, T0 + 6),
    }
    ids = await append(redis_client, *conflicting.values())
    fine = await append(redis_client, book.hold(1, 3, 10, T0 + 7, T0 + 100 * SECOND))
    writer = await drain(settings, redis_client, db_engine)

    assert writer.stats.dead_lettered == 4
    letters = await dead_letters(redis_client)
    assert sorted(letters) == sorted(ids)
    reasons = [letters[i][b"reason"].decode() for i in ids]
    assert "hold id 1 is already in the ledger for another hold" in reasons[0]
    assert "hold 1 has already ended otherwise" in reasons[1]
    assert "hold 2 has already ended otherwise" in reasons[2]
    assert "hold 2 has already ended otherwise" in reasons[3]
    holds, events = await hold_rows(db_engine), await hold_event_rows(db_engine)
    assert {i: holds[i] for i in before[0]} == before[0]
    assert events == before[1]
    assert holds[6]["stream_entry_id"] == fine[0]
    # The second capture's transaction went with its event: not stored either.
    assert 5 not in await ledger(db_engine)


async def test_a_hold_ended_before_its_creation_is_stored_all_the_same(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    """Several writers may store the end of a hold before its creation: no foreign key."""
    book = Book()
    created = book.hold(1, 2, 300, T0, T0 + SECOND)
    await append(redis_client, book.end("hold_expired", 1, T0 + SECOND))
    await drain(settings, redis_client, db_engine)
    assert list(await hold_event_rows(db_engine)) == [1]
    assert await hold_rows(db_engine) == {}
    await append(redis_client, created)
    await drain(settings, redis_client, db_engine)
    assert list(await hold_rows(db_engine)) == [1]
    assert await dead_letters(redis_client) == {}


def test_parse_entry_reads_hold_events_and_refuses_malformed_ones() -> None:
    book = Book()
    created = book.hold(1, 2, 300, T0, T0 + SECOND, idem_key="k")
    event = parse_entry(b(created))
    assert event == HoldEvent(
        kind="hold_created",
        hold_id=1,
        from_user_id=1,
        to_user_id=2,
        amount_kopecks=300,
        at_us=T0,
        expires_at_us=T0 + SECOND,
        idempotency_key="k",
    )
    broken: list[dict[str, str]] = [
        dict(created, amount="0"),
        dict(created, to="1"),  # to oneself
        dict(created, hold="x"),
        dict(created, kind="hold_paused"),
        dict(created, expires_at_us="99999999999999999999"),
        dict(created, hold=str(2**63)),
        {k: v for k, v in created.items() if k != "hold"},
        {k: v for k, v in created.items() if k != "expires_at_us"},
    ]
    for fields in broken:
        with pytest.raises(Unparseable):
            parse_entry(b(fields))


async def test_malformed_hold_records_are_dead_lettered(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    book = Book()
    created = book.hold(1, 2, 300, T0, T0 + SECOND)
    bad = await append(
        redis_client,
        {k: v for k, v in created.items() if k != "hold"},  # unparseable
        dict(created, hold="50", expires_at_us=str(T0)),  # expires at creation: a check
        dict(created, hold="51", to="77"),  # no such user: a foreign key
        dict(created, hold="52", idem_key="k" * 65),  # too long
        dict(book.deposit(2, 5, T0), kind="refund", from_balance="0"),  # no refund_of
    )
    good = await append(redis_client, created)
    writer = await drain(settings, redis_client, db_engine)

    assert writer.stats.dead_lettered == 5
    letters = await dead_letters(redis_client)
    assert sorted(letters) == sorted(bad)
    assert letters[bad[0]][b"reason"].startswith(b"unparseable: missing field")
    assert b"holds_expire_after_creation" in letters[bad[1]][b"reason"]
    assert b"foreign key" in letters[bad[2]][b"reason"]
    assert b"value too long" in letters[bad[3]][b"reason"]
    assert letters[bad[4]][b"reason"].startswith(b"unparseable")
    assert (await hold_rows(db_engine))[1]["stream_entry_id"] == good[0]


async def _delete(engine: AsyncEngine, table: str, column: str, ids: list[int]) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(f"DELETE FROM {table} WHERE {column} = ANY(:ids)"), {"ids": ids}
        )


async def _everything(engine: AsyncEngine) -> tuple[Any, ...]:
    return (await ledger(engine), await hold_rows(engine), await hold_event_rows(engine))


async def test_replay_restores_hold_records_and_captures(
    settings: Settings, redis_client: RedisClient, db_engine: AsyncEngine, users: None
) -> None:
    book = Book()
    await append(
        redis_client,
        book.deposit(1, 10_000, T0),  # 1
        book.hold(1, 2, 3_000, T0 + 1, T0 + 100 * SECOND),  # hold 2
        book.hold(1, 3, 1_000, T0 + 2, T0 + 100 * SECOND),  # hold 3
        book.capture(2, 3_000, T0 + 3),  # 4
        book.end("hold_voided", 3, T0 + 4),  # no id: after 4, before 5
        book.hold(1, 2, 10, T0 + 5, T0 + 100 * SECOND),  # hold 5
        book.refund(2, 1, 100, T0 + 6, refund_of=4),  # 6
    )
    await drain(settings, redis_client, db_engine)
    before = await _everything(db_engine)

    await _delete(db_engine, "hold_events", "hold_id", [2, 3])
    await _delete(db_engine, "transactions", "id", [4, 6])
    await _delete(db_engine, "holds", "id", [2, 5])
    # From 5: hold 5, refund 6, and the void just before hold 5 (it took no id).
    assert await replay(settings, redis_client, db_engine, BUCKET, "5") == 3
    after = await _everything(db_engine)
    assert sorted(after[0]) == [1, 6]
    assert sorted(after[1]) == [3, 5]
    assert sorted(after[2]) == [3]
    # Everything: the capture is its transaction and its event again.
    assert await replay(settings, redis_client, db_engine, BUCKET, "1") == 3
    assert await _everything(db_engine) == before
    assert await replay(settings, redis_client, db_engine, BUCKET, "1") == 0
    # A void of the last hold, after the last id issued, is replayed from the next id on.
    ids = await append(redis_client, book.end("hold_voided", 5, T0 + 7))
    assert await replay(settings, redis_client, db_engine, BUCKET, "7") == 1
    assert (await hold_event_rows(db_engine))[5]["stream_entry_id"] == ids[0]
