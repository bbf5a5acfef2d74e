"""A Valkey Cluster (three primaries, a replica each: tests/support/cluster.py) under load
(`wallet serve --workers 2` and `wallet writer` as real processes, on a redis+cluster://
URL): the slot of the money's hash tag ``{b0}`` is moved to another primary while deposits
and transfers run, the classic way, key by key (SETSLOT IMPORTING/MIGRATING, MIGRATE in
batches, SETSLOT NODE), which gives the money scripts, all multi-key, ASK and TRYAGAIN
windows.

A redirected call did not run; the client follows it a bounded number of times and then
answers 503 (nothing ran), which the load retries with its Idempotency-Key. Afterwards
every 201 is in the stream and the ledger exactly once, no id twice, conservation holds at
every snapshot (before, after, at the end), `wallet reconcile` is clean, and no request was
answered 500.
"""

import asyncio
import time

from tests.support.cluster import ClusterDeployment
from tests.support.faults.cluster_money import (
    MONEY_SLOT,
    check_everything_acknowledged_once,
    conservation,
    redirections,
)
from tests.support.faults.load import LoadDriver, Loader
from tests.support.faults.procs import Processes, wallet_env

LOAD_BEFORE_S = 2.0
LOAD_AFTER_S = 2.0
TEST_LIMIT_S = 120.0


async def test_the_money_slot_moved_to_another_primary_under_load(
    processes: Processes, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    deployment = ClusterDeployment(processes, replicas=True)
    env = wallet_env(deployment.url(), database_url)
    async with asyncio.timeout(TEST_LIMIT_S):
        await asyncio.to_thread(deployment.start)
        source = deployment.owner(MONEY_SLOT)
        target = next(p for p in deployment.primaries if p is not source)
        serve = processes.serve(env)
        await serve.start()
        processes.writer(env).start()
        async with LoadDriver(serve.base_url, prefix="csm", seed=16) as driver:
            await driver.add_users(20)
            user_ids = [user.id for user in driver.users]
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(LOAD_BEFORE_S)
                before = await conservation(source, user_ids)
                source_redirections = redirections(source)
                started = time.monotonic()
                keys_moved = await asyncio.to_thread(deployment.move_slot, MONEY_SLOT, target)
                finished = time.monotonic()
                source_redirections = {
                    name: count - source_redirections[name]
                    for name, count in redirections(source).items()
                }
                assert deployment.owner(MONEY_SLOT) is target
                after = await conservation(target, user_ids)
                await asyncio.sleep(LOAD_AFTER_S)
            stats = driver.stats
        assert before.holds, before
        assert after.holds, after
        ledger_rows, to_ledger_s = await check_everything_acknowledged_once(
            stats, target, user_ids, database_url, env
        )
        assert stats.failures["500"] == 0, dict(stats.failures)
        answered_201_during = stats.answered_between(started, finished)
        answered_503_during = stats.answered_between(started, finished, "503")
        assert stats.answered_between(finished, time.monotonic()) > 0, "no 201 after the move"
        print(
            f"slot {MONEY_SLOT}: {keys_moved} keys moved {source.name} -> {target.name} in"
            f" {finished - started:.2f} s under load; the source answered {source_redirections};"
            f" during the move {answered_201_during} 201s and {answered_503_during} 503s;"
            f" {len(stats.acks)} acknowledged in all, failed attempts {dict(stats.failures)},"
            f" refusals {dict(stats.refusals)}; ledger {ledger_rows} rows ({to_ledger_s} s"
            f" to reach it); snapshots: before {before}, after {after}"
        )
