"""kill -9 of the whole API (`wallet serve`: its master and workers) while transfers move
money across buckets on a Valkey Cluster of three primaries (WALLET_BUCKETS=3, each bucket's
slot on its own primary): requests are cut off between the legs of their sagas, with money
reserved on the payer's bucket and not yet credited on the payee's. No client retries them
(the API stays down), so `wallet writer`'s recovery must complete each after its deadline
(docs/scaling.md, "Across buckets"): every reservation left half-way is credited and
settled, none voided, nothing stays in transit, money is conserved (the balances add up to
the deposits the ledger holds), every 201 is in the ledger once, and `wallet reconcile` is
clean."""

import asyncio
import time

import pytest

from service.redis import keyspace
from service.redis.client import connect_redis
from service.settings import Settings
from tests.support.cluster import ClusterDeployment
from tests.support.faults.across_buckets import (
    BUCKETS,
    check_money_across_buckets,
    half_way,
    in_transit,
    wait_for_recovery,
)
from tests.support.faults.load import Ack, LoadDriver, Loader
from tests.support.faults.procs import Processes, wallet_env

LOAD_S = 1.5
# Each try kills the API once; a try whose kill left no reservation half-way starts the API
# again for another (seen here: one try in two or three leaves some, yet once in .ci/run no
# try of ten did; the requests cut off are mostly between other steps).
MAX_TRIES = 25
TEST_LIMIT_S = 300.0


async def test_the_api_killed_between_the_legs_is_completed_by_recovery(
    processes: Processes, shared_servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, database_url = shared_servers
    deployment = ClusterDeployment(processes, replicas=False)
    env = wallet_env(deployment.url(), database_url, buckets=str(BUCKETS))
    # This process reads the deployment's keys and buckets too (put back after the test).
    monkeypatch.setattr(keyspace, "BUCKETS", BUCKETS)
    async with asyncio.timeout(TEST_LIMIT_S):
        await asyncio.to_thread(deployment.start)
        processes.writer(env).start()
        redis = connect_redis(Settings(redis_url=deployment.url(), buckets=BUCKETS))
        acks: list[Ack] = []
        try:
            left: list[tuple[int, int]] = []
            for attempt in range(MAX_TRIES):
                serve = processes.serve(env, name=f"serve{attempt}")
                await serve.start()
                async with LoadDriver(
                    serve.base_url, prefix=f"ak{attempt}", seed=attempt, give_up_after_s=2
                ) as driver:
                    await driver.add_users(12)
                    await driver.fund(100_000)
                    user_ids = [user.id for user in driver.users]
                    assert len({keyspace.bucket_of(u) for u in user_ids}) == BUCKETS
                    async with Loader(driver, concurrency=32):
                        await asyncio.sleep(LOAD_S)
                        serve.kill9()  # the master and its workers, mid-request
                        killed_at = time.monotonic()
                    acks += list(driver.stats.acks.values())
                left = await half_way(redis)
                if left:
                    break
            assert left, f"no kill in {MAX_TRIES} left a reservation half-way"
            assert await in_transit(redis) > 0
            assert await wait_for_recovery(redis, killed_at) == left
            await check_money_across_buckets(redis, acks, database_url, env)
        finally:
            await redis.aclose()
        print(
            f"{len(left)} reservations left half-way by the kill, all credited by recovery"
            f" within {time.monotonic() - killed_at:.1f} s; {len(acks)} 201s"
        )
