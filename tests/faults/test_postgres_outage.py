"""PostgreSQL (an instance of the test's own) stopped under load: the API keeps accepting
money, /readyz answers 503 naming the database, the writer backs off and catches up, and
nothing is lost."""

import asyncio
import time

from service.redis.types import RedisClient
from tests.support.faults.checks import compare, ledger_rows, stream_rows, wait_until_in_ledger
from tests.support.faults.load import LoadDriver, Loader
from tests.support.faults.procs import PostgresServer, Processes, run_wallet, wallet_env

OUTAGE_S = 10.0  # the issue says 30 s; benchmarks/faults_long_run.py runs that


async def test_postgres_down_money_keeps_moving_and_nothing_is_lost(
    processes: Processes,
    own_postgres: PostgresServer,
    redis_client: RedisClient,
    redis_url: str,
) -> None:
    async with asyncio.timeout(150):
        database_url = await own_postgres.create_database("wallet")
        env = wallet_env(redis_url, database_url)
        code, output = await run_wallet(["migrate"], env)
        assert code == 0, output
        serve = processes.serve(env)
        await serve.start()
        writer = processes.writer(env)
        writer.start()
        async with LoadDriver(serve.base_url, prefix="pg", seed=3) as driver:
            await driver.add_users(20)
            assert (await driver.readyz())[0] == 200
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(2.0)
                own_postgres.stop_server("fast")
                down_at = time.monotonic()
                readiness = []
                while time.monotonic() - down_at < OUTAGE_S:
                    readiness.append(await driver.readyz())
                    await asyncio.sleep(0.5)
                own_postgres.start()
                up_at = time.monotonic()
                await own_postgres.wait_ready()
                acked_by_up = [a.txn_id for a in driver.stats.acks.values()]
                caught_up_in = await wait_until_in_ledger(database_url, acked_by_up, 30)
                await asyncio.sleep(1.0)
            stats = driver.stats
            acks = list(stats.acks.values())
            await wait_until_in_ledger(database_url, [a.txn_id for a in acks], 30)
            ready_after = await driver.readyz()

        # Money kept moving: 201s all through the outage, and no request failed.
        during = stats.answered_between(down_at, up_at)
        assert during > 0
        assert stats.failures_between(down_at, up_at) == 0, stats.failures
        assert not stats.unanswered
        # /readyz said what was degraded, and recovered.
        assert readiness, "no /readyz answer during the outage"
        for status, body in readiness[1:]:  # the first may precede the shutdown's end
            assert status == 503, body
            assert body["redis"] == "ok", body
            assert body["database"].startswith("unavailable"), body
        assert ready_after[0] == 200, ready_after
        # The writer backed off (and said so), then caught up: nothing lost or doubled.
        assert "retrying in" in writer.log_path.read_text()
        verdict = compare(acks, await ledger_rows(database_url), stats.conflicting_replays)
        assert verdict.ok, verdict.summary()
        assert not verdict.unacknowledged, verdict.summary()
        stream = await stream_rows(redis_client)
        assert [r.txn_id for r in await ledger_rows(database_url)] == [r.txn_id for r in stream]
        code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
        assert code == 0, report
        print(
            f"{during} 201s during a {OUTAGE_S:.0f} s outage; ledger caught up"
            f" {caught_up_in:.1f} s after PostgreSQL was back; {verdict.summary()}"
        )
