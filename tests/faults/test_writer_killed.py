"""kill -9 the writer mid-load, restart it: every acknowledged transaction is in
PostgreSQL exactly once, and reconcile is clean."""

import asyncio
import socket
import time
from typing import cast

from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.faults.checks import compare, ledger_rows, stream_rows, wait_until_in_ledger
from tests.support.faults.load import LoadDriver, Loader
from tests.support.faults.procs import Processes, run_wallet, wallet_env

# The contract: a restarted writer resumes within 10 s, including the records a killed
# writer had read but not acknowledged.
RESUME_WITHIN_S = 10.0


# Kills of the writer until one catches it holding a batch it has not acknowledged.
KILL_ATTEMPTS = 5


async def _pending_of(redis: RedisClient, consumer_names: set[str]) -> int:
    consumers = cast(
        list[dict[str, object]],
        await redis.xinfo_consumers(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP),
    )
    return sum(
        int(cast(int, c["pending"]))
        for c in consumers
        if (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]) in consumer_names
    )


async def test_writer_killed_mid_batch_loses_and_doubles_nothing(
    processes: Processes, shared_servers: tuple[str, str], redis_client: RedisClient
) -> None:
    redis_url, database_url = shared_servers
    env = wallet_env(redis_url, database_url)
    async with asyncio.timeout(150):
        serve = processes.serve(env)
        await serve.start()
        writer = processes.writer(env)
        writer.start()
        async with LoadDriver(serve.base_url, prefix="wk", seed=1) as driver:
            await driver.add_users(20)
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(1.5)
                # Kill it the moment it holds entries read but not acknowledged. It may
                # acknowledge them between the look and the kill: then again.
                for _ in range(KILL_ATTEMPTS):
                    name = f"{socket.gethostname()}-{writer.pid}"
                    deadline = time.monotonic() + 20
                    while not await _pending_of(redis_client, {name}):
                        assert time.monotonic() < deadline, "the writer never held a batch"
                        await asyncio.sleep(0.001)
                    writer.kill9()
                    pending_at_kill = await _pending_of(redis_client, {name})
                    if pending_at_kill:
                        break
                    writer.start()
                assert pending_at_kill > 0, f"no kill in {KILL_ATTEMPTS} caught a batch"
                killed_at = time.monotonic()
                await asyncio.sleep(1.0)  # money keeps moving without a writer
                writer.start()
                restarted_at = time.monotonic()
                acked_by_restart = [a.txn_id for a in driver.stats.acks.values()]
                resumed_in = await wait_until_in_ledger(
                    database_url, acked_by_restart, RESUME_WITHIN_S
                )
                await asyncio.sleep(1.0)
            acks = list(driver.stats.acks.values())
            await wait_until_in_ledger(database_url, [a.txn_id for a in acks], 30)

        stats = driver.stats
        assert not stats.unanswered
        assert stats.answered_between(killed_at, restarted_at) > 0
        ledger = await ledger_rows(database_url)
        verdict = compare(acks, ledger, stats.conflicting_replays)
        assert verdict.ok, verdict.summary()
        assert not verdict.unacknowledged, verdict.summary()
        assert [r.txn_id for r in ledger] == [r.txn_id for r in await stream_rows(redis_client)]
        code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
        assert code == 0, report
        print(
            f"writer killed with {pending_at_kill} entries pending; resumed in {resumed_in:.1f} s;"
            f" {verdict.summary()}"
        )
