"""WALLET_REDIS_MIN_REPLICAS (service/redis/replicas.py), on a primary and a replica of the
test's own: a money call is answered once the replica has its writes, with one WAITAOF per
pipelined batch; without the replica's confirmation a payment is 503 outcome_unknown (it
may be lost by a failover), never refused, while refusals and the calls that move no
money are answered as they are; and the writer stores only what the replica has."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.ledger.writer import StreamWriter
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.streams import ensure_consumer_group
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.faults.checks import ledger_ids
from tests.support.faults.procs import HOST, Processes, RedisServer
from tests.support.helpers import add_users, refusing
from tests.support.lost_replies import LosesTheReply
from tests.support.sentinel import primary_and_replica, start_primary_and_replica

# Short, so that an unconfirmed call is answered soon; far above what a live replica takes
# (the periodic report of one that missed a request for it included).
WAIT_MS = 1_000


@contextmanager
def servers(
    tmp_path: Path, primary_options: tuple[str, ...] = ()
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, running; stopped at the end."""
    processes = Processes(tmp_path)
    try:
        primary, replica = primary_and_replica(processes, primary_options)
        start_primary_and_replica(primary, replica)
        yield primary, replica
    finally:
        processes.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    with servers(tmp_path) as primary_and_its_replica:
        yield primary_and_its_replica


@asynccontextmanager
async def money_on(primary: RedisServer, **update: object) -> AsyncIterator[MoneyScripts]:
    settings = Settings(
        redis_url=primary.url, redis_min_replicas=1, redis_replica_wait_ms=WAIT_MS
    ).model_copy(update=update)
    client = connect_redis(settings)
    try:
        await client.set(keyspace.txn_seq(BUCKET), 0)
        yield MoneyScripts(client, settings)
    finally:
        await client.aclose()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server stops answering (its replication link stays open), then goes on."""
    server.pause()
    try:
        yield
    finally:
        server.resume()


def calls_of(server: RedisServer, command: str) -> int:
    stats = redis.Redis(host=HOST, port=server.port).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def balance_on(server: RedisServer, user_id: int) -> int:
    raw = redis.Redis(host=HOST, port=server.port).hget(keyspace.user(user_id), "balance_kopecks")
    return int(raw or 0)


async def test_money_waits_for_the_replica_once_per_batch(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    async with money_on(primary) as money:
        for user_id in (1, 2):
            await money.register_user(user_id)
        assert calls_of(primary, "wait") == calls_of(primary, "waitaof") == 0  # no money call
        # The scripts loaded, and the server asked whether it has WAITAOF.
        await money.deposit(1, 10)
        await money.transfer(1, 2, 5)
        waits = calls_of(primary, "wait")
        # One turn of the event loop: one batch, one WAIT and WAITAOF.
        accepted = await asyncio.gather(*(money.deposit(1, 10) for _ in range(30)))
        assert calls_of(primary, "wait") == waits + 1
        assert calls_of(primary, "waitaof") == waits + 1 + 1  # and the question
        assert len({a.txn_id for a in accepted}) == 30
        assert balance_on(replica, 1) == 305  # on the replica by the time they are answered
        transfers = await asyncio.gather(*(money.transfer(1, 2, 5) for _ in range(10)))
        assert calls_of(primary, "wait") == waits + 2
        assert len(transfers) == 10
        assert (balance_on(replica, 1), balance_on(replica, 2)) == (255, 55)


async def test_without_the_replica_a_payment_is_outcome_unknown_and_a_refusal_stands(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    async with money_on(primary) as money:
        for user_id in (1, 2):
            await money.register_user(user_id)
        await money.deposit(1, 100)
        with paused(replica):
            deposit = money.deposit(1, 50, idempotency_key="k")
            refused = money.transfer(1, 2, 1_000)
            read = money.balance(1)
            outcomes = await asyncio.gather(deposit, refused, read, return_exceptions=True)
            # The deposit ran (it may be lost by a failover, or not): never "refused".
            assert isinstance(outcomes[0], refusals.Refused), outcomes[0]
            assert outcomes[0].refusal is refusals.OUTCOME_UNKNOWN
            assert balance_on(primary, 1) == 150
            # A refusal moved nothing; a read is a read.
            assert isinstance(outcomes[1], refusals.Refused), outcomes[1]
            assert outcomes[1].refusal is refusals.INSUFFICIENT_FUNDS
            assert not isinstance(outcomes[2], BaseException), outcomes[2]
            assert outcomes[2].balance_kopecks == 150
        # The retry with the same key, once the replica confirms, gets the first outcome.
        replayed = await money.deposit(1, 50, idempotency_key="k")
        assert replayed.replayed
        assert balance_on(replica, 1) == 150


async def test_a_lost_reply_is_answered_once_the_replica_has_what_the_lookup_found(
    pair: tuple[RedisServer, RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = pair
    async with money_on(primary, request_outcome_wait_ms=3_000) as money:
        await money.register_user(1)
        # The deposit runs; its reply is lost; the lookup finds it, and the replica has it.
        monkeypatch.setattr(money, "_deposit", LosesTheReply(money._deposit))
        found = await money.deposit(1, 10)
        assert balance_on(replica, 1) == 10
        with paused(replica), refusing(refusals.OUTCOME_UNKNOWN):
            # Found again and again, never confirmed: it may still be lost by a failover.
            await money.deposit(1, 10)
        assert balance_on(primary, 1) == 20
        assert found.txn_id > 0


async def test_wait_stands_in_where_the_server_has_no_waitaof(tmp_path: Path) -> None:
    with servers(tmp_path, ("--rename-command", "WAITAOF", "")) as (primary, replica):
        async with money_on(primary) as money:
            await money.register_user(1)
            await money.deposit(1, 10)  # loads the script, asks for WAITAOF: unknown
            waits = calls_of(primary, "wait")
            await money.deposit(1, 10)
            assert calls_of(primary, "wait") == waits + 1
            with paused(replica), refusing(refusals.OUTCOME_UNKNOWN):
                await money.deposit(1, 10)
            assert calls_of(primary, "wait") == waits + 2
            assert calls_of(primary, "waitaof") == 0


async def test_the_writer_stores_only_what_the_replica_has(
    pair: tuple[RedisServer, RedisServer], db_engine: AsyncEngine
) -> None:
    primary, replica = pair
    async with money_on(primary) as money:
        settings = Settings(
            redis_url=primary.url,
            redis_min_replicas=1,
            redis_replica_wait_ms=WAIT_MS,
            writer_block_ms=10,
            writer_retry_max_backoff_ms=100,
        )
        client = connect_redis(settings)
        await add_users(db_engine, money, [1])
        await ensure_consumer_group(client, BUCKET)
        stop = asyncio.Event()
        writer = asyncio.create_task(StreamWriter(settings, client, db_engine, BUCKET).run(stop))
        try:
            confirmed = await money.deposit(1, 10)
            await _until_in_ledger(db_engine, {confirmed.txn_id})
            with paused(replica):
                with refusing(refusals.OUTCOME_UNKNOWN):
                    await money.deposit(1, 20)
                await asyncio.sleep(1.5)  # the writer reads it, and waits for the replica
                assert await ledger_ids(_url(db_engine)) == {confirmed.txn_id}
            # The replica has it now: stored.
            await _until_in_ledger(db_engine, {confirmed.txn_id, confirmed.txn_id + 1})
        finally:
            stop.set()
            await writer
            await client.aclose()


async def _until_in_ledger(engine: AsyncEngine, ids: set[int], limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while (stored := await ledger_ids(_url(engine))) != ids:
        assert asyncio.get_running_loop().time() < deadline, (stored, ids)
        await asyncio.sleep(0.05)


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)
