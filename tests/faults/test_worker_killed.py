"""kill -9 an API worker mid-load: no half-applied transaction (balances and the stream
agree), and clients retrying with the same Idempotency-Key never move money twice."""

import asyncio
import os
import signal
from urllib.parse import urlsplit

from service.redis.types import RedisClient
from tests.support.faults.checks import (
    compare,
    ledger_rows,
    redis_balances,
    replay,
    stream_rows,
    stream_transactions,
    wait_until_in_ledger,
)
from tests.support.faults.load import LoadDriver, Loader, Request
from tests.support.faults.procs import DelayProxy, Processes, RedisServer, run_wallet, wallet_env

MAX_KILLS = 5


async def test_worker_killed_mid_request_half_applies_and_doubles_nothing(
    processes: Processes, shared_servers: tuple[str, str], redis_client: RedisClient
) -> None:
    redis_url, database_url = shared_servers
    shared = urlsplit(redis_url)
    assert shared.hostname in ("127.0.0.1", "localhost"), "the proxy forwards to loopback"
    async with asyncio.timeout(150), DelayProxy(shared.port or 6379, 0.02) as proxy:
        # The API reaches Redis over a link with 20 ms of latency back: a worker killed
        # mid-request often leaves a transaction applied whose 201 never left.
        env = wallet_env(proxy.url(int(shared.path.strip("/") or 0)), database_url)
        serve = processes.serve(env, workers=2)
        await serve.start()
        processes.writer(env).start()
        async with LoadDriver(serve.base_url, prefix="wo", seed=2) as driver:
            await driver.add_users(20)
            async with Loader(driver, concurrency=24):
                replaced_in: list[float] = []
                # Kill workers until a retry has met a transaction its killed attempt
                # applied (usually the first kill does).
                while len(replaced_in) < MAX_KILLS and not any(
                    a.replayed_after_failure for a in driver.stats.acks.values()
                ):
                    await asyncio.sleep(1.5)
                    victim = serve.worker_pids()[0]
                    os.kill(victim, signal.SIGKILL)
                    replaced_in.append(await serve.wait_workers(exclude={victim}))
                    await asyncio.sleep(1.0)  # the cut-off clients retry
            stats = driver.stats
            assert not stats.unanswered, list(stats.unanswered)[:5]
            # The kills did cut requests off (otherwise this test proves nothing).
            assert sum(stats.failures.values()) > 0, stats.failures
            retried = [a for a in stats.acks.values() if a.attempts > 1]
            # Of those, the ones the killed worker had applied: the retry got the replay.
            replayed = [a for a in retried if a.replayed_after_failure]
            assert replayed, "no retry met a transaction applied by a killed worker"

            # Balances and the stream agree: replaying the stream gives every balance, and
            # every record's stored after-balances.
            txns = await stream_transactions(redis_client)
            applied = replay(txns)
            assert not applied.inconsistent, applied.inconsistent[:10]
            assert not applied.negative
            user_ids = [u.id for u in driver.users]
            balances = await redis_balances(redis_client, user_ids)
            assert balances == {u: applied.balances[u] for u in user_ids}
            verdict = compare(stats.acks.values(), await stream_rows(redis_client))
            assert verdict.ok, verdict.summary()
            assert not verdict.unacknowledged, verdict.summary()
            assert not stats.conflicting_replays

            # Retrying once more with the same keys: the first outcome, no money moved.
            sample = retried + list(stats.acks.values())[:: max(1, len(stats.acks) // 50)]
            for ack, status, body in await driver.resend(sample):
                assert (status, body["id"]) == (201, ack.txn_id), (ack, status, body)
            assert await redis_balances(redis_client, user_ids) == balances
            assert len(await stream_transactions(redis_client)) == len(txns)

        await wait_until_in_ledger(database_url, [a.txn_id for a in stats.acks.values()], 30)
        ledger_verdict = compare(stats.acks.values(), await ledger_rows(database_url))
        assert ledger_verdict.ok, ledger_verdict.summary()
        code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
        assert code == 0, report
        print(
            f"workers replaced in {[round(s, 2) for s in replaced_in]} s; failed attempts"
            f" {dict(stats.failures)}; {len(retried)} acks needed a retry, {len(replayed)} of"
            " them had been applied by the killed worker;"
            f" {verdict.summary()}"
        )


async def test_worker_killed_while_redis_is_down_is_replaced_once_redis_is_back(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    env = wallet_env(own_redis.url, database_url)
    async with asyncio.timeout(60):
        serve = processes.serve(env, workers=2)
        await serve.start()
        own_redis.kill9()
        victim = serve.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(3.0)  # the master replaces it meanwhile
        own_redis.start()
        await own_redis.wait_ready()
        async with LoadDriver(serve.base_url, prefix="wb", give_up_after_s=15) as driver:
            assert serve.alive, "the API exited"
            await serve.wait_workers(exclude={victim}, limit_s=15)
            await driver.add_users(2)
            request = Request("after", driver.users[0].id, "/api/balance/deposit/", {"amount": 1})
            assert await driver.send(request) == 201
