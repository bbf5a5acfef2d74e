"""Redis with a replica and Sentinel (service/redis/sentinel.py), on a deployment of the
test's own (tests/support/sentinel.py): the client finds the primary the Sentinels name,
follows a failover with no restart, takes a demoted primary's refusal for an outage in
which nothing ran, and never issues a transaction id twice on a new primary."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ReadOnlyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import refusals
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.refusals import Refused
from service.ledger.id_counter import restart_counter_set_aside
from service.ledger.rebuild import ensure_transaction_counter
from service.outages import is_outage
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.pipelining import ReplyLost
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.faults.procs import HOST, RedisServer
from tests.support.helpers import add_users, persist
from tests.support.sentinel import SERVICE_NAME, SentinelDeployment, sentinel_deployment

FAILOVER_LIMIT_S = 30.0


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[SentinelDeployment]:
    with sentinel_deployment(tmp_path / "redis") as deployment:
        yield deployment


@pytest.fixture
async def client(deployment: SentinelDeployment) -> AsyncIterator[RedisClient]:
    client = connect_redis(Settings(redis_url=deployment.url()))
    try:
        yield client
    finally:
        await client.aclose()


def direct(server: RedisServer) -> redis.Redis:
    """A plain client of one server, whatever its role."""
    return redis.Redis(host=HOST, port=server.port, socket_timeout=5)


def replication_id(server: RedisServer) -> str:
    return str(direct(server).info("replication")["master_replid"])


async def test_money_moves_on_the_primary_the_sentinels_name(
    deployment: SentinelDeployment, client: RedisClient
) -> None:
    await client.set(keyspace.txn_seq(BUCKET), 0)  # a new system (db_engine: epoch 0 taken)
    money = MoneyScripts(client, Settings(redis_url=deployment.url()))
    await money.register_user(1)
    accepted = await money.deposit(1, 500)
    assert accepted.txn_id == 1
    primary = direct(deployment.primary)
    assert primary.hget(keyspace.user(1), "balance_kopecks") == b"500"
    # The first connection recorded the primary's replication history as the counter's.
    assert (
        primary.get(keyspace.txn_seq_primary(BUCKET)) == replication_id(deployment.primary).encode()
    )


async def test_after_a_failover_the_client_follows_and_no_id_is_issued_twice(
    deployment: SentinelDeployment, db_engine: AsyncEngine
) -> None:
    # With a replica's confirmation: the demoted primary, which takes writes until the
    # Sentinels reconfigure it, can acknowledge none (it has no replica left).
    settings = Settings(redis_url=deployment.url(), redis_min_replicas=1)
    client = connect_redis(settings)
    try:
        await _follow_a_failover(deployment, db_engine, settings, client)
    finally:
        await client.aclose()


async def _follow_a_failover(
    deployment: SentinelDeployment, db_engine: AsyncEngine, settings: Settings, client: RedisClient
) -> None:
    await client.set(keyspace.txn_seq(BUCKET), 0)
    money = MoneyScripts(client, settings)
    await money.register_user(1)
    before = [(await money.deposit(1, 100)).txn_id for _ in range(3)]
    assert before == [1, 2, 3]

    # A failover with the old primary alive (Sentinel demotes it and closes its clients).
    sentinel = redis.Redis(host=HOST, port=deployment.sentinels[0].port)
    sentinel.sentinel_failover(SERVICE_NAME)
    new = await deployment.wait_for_failover(deployment.primary, FAILOVER_LIMIT_S)
    assert new is deployment.replica

    # Until the counter starts again in a new epoch, money is refused; the refusals on the
    # way are outages or 503s, never a payment with an id of the old counter.
    deadline = time.monotonic() + FAILOVER_LIMIT_S
    failures: list[BaseException] = []
    while not (failures and _is(failures[-1], refusals.NOT_REBUILT)):
        assert time.monotonic() < deadline, f"the client did not reach the new primary: {failures}"
        with pytest.raises(Exception) as failed:  # noqa: PT011 (any failure; checked below)
            await money.deposit(1, 100)
        failures.append(failed.value)
        await asyncio.sleep(0.1)
    for failure in failures[:-1]:
        assert is_outage(failure) or _is(failure, refusals.OUTCOME_UNKNOWN), repr(failure)
    on_new = direct(new)
    assert on_new.get(keyspace.txn_seq(BUCKET)) is None
    assert on_new.get(keyspace.txn_seq_behind(BUCKET)) == b"3"
    assert on_new.get(keyspace.txn_seq_primary(BUCKET)) == replication_id(new).encode()

    # What the writer's keeper does: a new epoch, above every id issued before.
    assert await restart_counter_set_aside(client, db_engine, BUCKET) == TXN_IDS_PER_EPOCH
    # The new primary's writes are confirmed once the Sentinels made the old one its
    # replica (they do when they next poll it: within 10 s).
    await deployment.wait_until_replicating(deployment.primary, FAILOVER_LIMIT_S)
    after = await money.deposit(1, 100)  # the deposit script loaded again on the new primary
    assert after.txn_id == TXN_IDS_PER_EPOCH + 1
    assert on_new.hget(keyspace.user(1), "balance_kopecks") == b"400"
    # Another connection to the same primary finds the counter its own.
    other = connect_redis(settings)
    try:
        assert (await MoneyScripts(other, settings).deposit(1, 1)).txn_id == after.txn_id + 1
    finally:
        await other.aclose()


async def test_a_primary_demoted_under_an_open_connection_refuses_and_nothing_runs(
    deployment: SentinelDeployment, client: RedisClient
) -> None:
    await client.set(keyspace.txn_seq(BUCKET), 0)
    money = MoneyScripts(client, Settings(redis_url=deployment.url()))
    await money.register_user(1)
    await money.deposit(1, 100)  # the pipeline's connection to the primary is open
    # Demoted behind the Sentinels' back (as when a partition heals), which closes no
    # connection: the next script meets READONLY.
    direct(deployment.replica).replicaof("NO", "ONE")
    direct(deployment.primary).replicaof(HOST, deployment.replica.port)
    with pytest.raises(ReadOnlyError) as refused:
        await money.deposit(1, 100)
    assert is_outage(refused.value)  # 503 with Retry-After: it did not run
    # The connection opens again, to what the Sentinels still name the primary, finds a
    # replica there and refuses before anything is sent.
    with pytest.raises(redis.ConnectionError, match="is a slave") as stale:
        await money.deposit(1, 100)
    assert not isinstance(stale.value, ReplyLost)
    for server in deployment.servers:
        assert direct(server).hget(keyspace.user(1), "balance_kopecks") == b"100"


async def test_a_counter_set_aside_starts_again_once_in_a_new_epoch(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    assert (
        await restart_counter_set_aside(redis_client, db_engine, BUCKET) is None
    )  # none set aside
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    await redis_client.set(keyspace.txn_seq_behind(BUCKET), 41)
    assert await restart_counter_set_aside(redis_client, db_engine, BUCKET) == TXN_IDS_PER_EPOCH
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()
    assert not await redis_client.exists(keyspace.txn_seq_behind(BUCKET))
    # A counter another process (or a rebuild) started first is kept; the one set aside
    # is dropped.
    await redis_client.set(keyspace.txn_seq_behind(BUCKET), 41)
    assert await restart_counter_set_aside(redis_client, db_engine, BUCKET) is None
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()
    assert not await redis_client.exists(keyspace.txn_seq_behind(BUCKET))
    # An epoch that would not be above the counter set aside is a bug, and writes nothing.
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    await redis_client.set(keyspace.txn_seq_behind(BUCKET), 5 * TXN_IDS_PER_EPOCH)
    restart = LuaScript(redis_client, "restart_counter")
    keys = [keyspace.txn_seq(BUCKET), keyspace.txn_seq_behind(BUCKET), keyspace.txn_clock(BUCKET)]
    assert await restart(keys=keys, args=[str(5 * TXN_IDS_PER_EPOCH), "0"]) == b"below"
    assert not await redis_client.exists(keyspace.txn_seq(BUCKET))
    # Through the keeper, the epoch taken is above it.
    assert await restart_counter_set_aside(redis_client, db_engine, BUCKET) == 6 * TXN_IDS_PER_EPOCH


async def test_a_counter_started_again_stamps_after_what_the_writer_stored_of_its_epoch(
    redis_client: RedisClient, db_engine: AsyncEngine, money: MoneyScripts
) -> None:
    """The new primary may lack a transaction the writer stored from the old one, and its
    host's clock be behind that transaction's stamp."""
    await add_users(db_engine, money, [1])
    ahead_us = int(time.time() * 1_000_000) + 3_600_000_000
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us)
    stored = await money.deposit(1, 5)
    await persist(redis_client, db_engine)
    # The promoted replica lacked it: its counter is one behind, its clock older.
    await redis_client.set(keyspace.txn_clock(BUCKET), ahead_us - 1_000_000)
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    await redis_client.set(keyspace.txn_seq_behind(BUCKET), stored.txn_id - 1)
    assert await restart_counter_set_aside(redis_client, db_engine, BUCKET) is not None
    assert (await money.deposit(1, 5)).created_at_us == stored.created_at_us + 1


async def test_the_api_starts_a_counter_set_aside_again_at_start(
    redis_client: RedisClient, db_engine: AsyncEngine
) -> None:
    """No writer running: the API's start (ensure_transaction_counter) does it too."""
    await redis_client.delete(keyspace.txn_seq(BUCKET))
    await redis_client.set(keyspace.txn_seq_behind(BUCKET), 7)
    assert await ensure_transaction_counter(redis_client, db_engine)
    assert await redis_client.get(keyspace.txn_seq(BUCKET)) == str(TXN_IDS_PER_EPOCH).encode()


def _is(error: BaseException, refusal: refusals.Refusal) -> bool:
    return isinstance(error, Refused) and error.refusal is refusal
