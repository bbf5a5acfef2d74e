"""A transaction id counter near the end of its epoch moves to a new one while money goes
on moving (service/ledger/id_counter.py, lua/advance_epoch.lua)."""

import asyncio
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.txn_id_epochs import TxnIdEpochsExhausted, take_txn_id_epoch
from service.domain import refusals
from service.domain.limits import EPOCH_ROLLOVER_MARGIN_IDS, MAX_TXN_ID_EPOCH, TXN_IDS_PER_EPOCH
from service.ledger.id_counter import advance_counter_near_its_epochs_end, run_counter_keeper
from service.redis import keyspace
from service.redis.money import MoneyScripts
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.helpers import next_txn_id_epoch, refusing, snapshot

E = TXN_IDS_PER_EPOCH
SEQ = keyspace.txn_seq(BUCKET)


async def test_a_counter_within_the_margin_moves_to_a_new_epoch_and_money_goes_on(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    assert await money.register_user(1)
    await redis_client.set(SEQ, 3 * E - 1 - EPOCH_ROLLOVER_MARGIN_IDS)  # exactly the margin left
    before = (await money.deposit(1, 5)).txn_id
    assert before == 3 * E - EPOCH_ROLLOVER_MARGIN_IDS
    assert await advance_counter_near_its_epochs_end(redis_client, db_engine, BUCKET) == 3 * E
    assert (await money.deposit(1, 5)).txn_id == 3 * E + 1
    assert await next_txn_id_epoch(db_engine) == 4


async def test_a_counter_further_from_the_end_stays_and_takes_no_epoch(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    epochs_before = await next_txn_id_epoch(db_engine)
    for seq in (E, 3 * E - 2 - EPOCH_ROLLOVER_MARGIN_IDS):
        await redis_client.set(SEQ, seq)
        assert await advance_counter_near_its_epochs_end(redis_client, db_engine, BUCKET) is None
        assert int(await redis_client.get(SEQ) or 0) == seq
    await redis_client.delete(SEQ)  # set aside, or lost with Redis: left to the restart
    assert await advance_counter_near_its_epochs_end(redis_client, db_engine, BUCKET) is None
    assert not await redis_client.exists(SEQ)
    assert await next_txn_id_epoch(db_engine) == epochs_before


async def test_an_exhausted_counter_refuses_money_until_the_keeper_moves_it(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    """With the writer (and its keeper) stopped long enough, the counter reaches its last
    id; money is refused (503) and nothing is issued outside the epoch; the keeper, back,
    moves it."""
    assert await money.register_user(1)
    await redis_client.set(SEQ, E - 1)
    with refusing(refusals.EPOCH_EXHAUSTED):
        await money.deposit(1, 5)
    stop = asyncio.Event()
    keeper = asyncio.create_task(run_counter_keeper(redis_client, db_engine, BUCKET, 0.01, stop))
    try:
        for _ in range(1_000):  # up to 10 s
            if int(await redis_client.get(SEQ) or 0) >= E:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await keeper
    assert (await money.deposit(1, 5)).txn_id == E + 1


async def test_of_two_writers_moving_one_counter_one_wins(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    await redis_client.set(SEQ, 2 * E - 10)
    moved = await asyncio.gather(
        *(advance_counter_near_its_epochs_end(redis_client, db_engine, BUCKET) for _ in range(2))
    )
    [start] = [m for m in moved if m is not None]  # the other's epoch goes unused
    assert int(await redis_client.get(SEQ) or 0) == start
    assert start in (2 * E, 3 * E)


async def test_advance_epoch_refuses_what_would_lower_or_leave_the_counter(
    redis_client: RedisClient,
) -> None:
    advance = LuaScript(redis_client, "advance_epoch")
    margin = str(EPOCH_ROLLOVER_MARGIN_IDS)
    await redis_client.set(SEQ, 3 * E - 2)
    before = await snapshot(redis_client)
    for keys, args, outcome in (
        ([SEQ], [str(2 * E), margin], b"below"),  # an older epoch: a bug
        ([SEQ], [str(E), margin], b"below"),
        ([SEQ], [str(3 * E + 1), margin], b"invalid_argument"),  # not an epoch's start
        ([SEQ], [str(4 * E), "0"], b"invalid_argument"),
        ([SEQ], [str(4 * E), str(E)], b"invalid_argument"),
        ([SEQ], [str(4 * E)], b"invalid_argument"),
        ([keyspace.txn_seq_behind(BUCKET)], [str(4 * E), margin], b"invalid_argument"),
    ):
        assert await advance(keys=keys, args=args) == outcome, (keys, args)
    assert await snapshot(redis_client) == before
    await redis_client.delete(SEQ)
    assert await advance(keys=[SEQ], args=[str(4 * E), margin]) == b"missing"
    assert not await redis_client.exists(SEQ)


async def test_the_last_epoch_is_handed_out_then_the_keeper_reports_and_goes_on(
    redis_client: RedisClient, db_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Running out of epochs needs an operator; the writer beside the keeper drains on."""
    async with db_engine.begin() as connection:
        await connection.execute(text(f"UPDATE txn_id_epoch SET next_epoch = {MAX_TXN_ID_EPOCH}"))
    assert await take_txn_id_epoch(db_engine, at_least_id=0, bucket=BUCKET) == MAX_TXN_ID_EPOCH
    with pytest.raises(TxnIdEpochsExhausted):
        await take_txn_id_epoch(db_engine, at_least_id=0, bucket=BUCKET)
    await redis_client.set(SEQ, E - 1)
    stop = asyncio.Event()
    keeper = asyncio.create_task(run_counter_keeper(redis_client, db_engine, BUCKET, 0.01, stop))
    try:
        for _ in range(1_000):  # up to 10 s
            if any(record.levelno == logging.CRITICAL for record in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await keeper  # ended by stop, not by the exhaustion
    assert "cannot move on" in caplog.text
    assert int(await redis_client.get(SEQ) or 0) == E - 1


async def test_a_counter_live_at_the_upgrade_moves_above_every_old_epoch(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    """Old epoch 3 (ids from 3·10^12) is the new 3000..3999; with old epochs up to 3 handed
    out, migration 0004 left next_epoch at 4000. A counter live in old epoch 3, near one of
    its 10^9 boundaries, moves to 4000, above every id the old epochs covered."""
    async with db_engine.begin() as connection:
        await connection.execute(text("UPDATE txn_id_epoch SET next_epoch = 4000"))
    await redis_client.set(SEQ, 3 * 10**12 + 6 * E - 10)
    assert await advance_counter_near_its_epochs_end(redis_client, db_engine, BUCKET) == 4000 * E
    assert 4000 * E == 4 * 10**12
