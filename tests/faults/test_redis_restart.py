"""Redis (an instance of the test's own: appendonly yes, appendfsync always) killed with
SIGKILL under load and started again on its append-only file: every acknowledged
transaction survives, in the balances, the stream and the idempotency records."""

import asyncio
import time

from redis.asyncio import Redis

from tests.support.faults.checks import (
    check_stream_and_balances,
    compare,
    idempotency_txn_ids,
    ledger_rows,
    wait_until_in_ledger,
)
from tests.support.faults.load import LoadDriver, Loader
from tests.support.faults.procs import Processes, RedisServer, run_wallet, wallet_env

DOWN_S = 1.0


async def test_redis_killed_and_restarted_on_its_aof_keeps_every_acknowledged_transaction(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    env = wallet_env(own_redis.url, database_url)
    async with asyncio.timeout(150):
        serve = processes.serve(env)
        await serve.start()
        processes.writer(env).start()
        async with LoadDriver(serve.base_url, prefix="rr", seed=4) as driver:
            await driver.add_users(20)
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(2.0)
                own_redis.kill9()
                killed_at = time.monotonic()
                acked_at_kill = len(driver.stats.acks)
                await asyncio.sleep(DOWN_S)
                own_redis.start()
                await own_redis.wait_ready()
                up_at = time.monotonic()
                await asyncio.sleep(2.0)
            stats = driver.stats
            acks = list(stats.acks.values())
            first_ack = stats.first_ack_after(up_at)
            assert first_ack is not None, "no 201 after Redis came back"
            assert not stats.unanswered
            assert not stats.conflicting_replays

            redis = Redis.from_url(own_redis.url)
            try:
                # Every 201, before and after the crash, is in the stream once, with its
                # idempotency record, and the balances are the stream's.
                await check_stream_and_balances(redis, acks, [u.id for u in driver.users])
                records = await idempotency_txn_ids(redis, acks)
                assert records == {a.key: a.txn_id for a in acks}
                # And a retry of any of them still gets its first answer.
                for ack, status, body in await driver.resend(acks[:acked_at_kill:20]):
                    assert (status, body["id"]) == (201, ack.txn_id), (ack, status, body)
            finally:
                await redis.aclose()

        await wait_until_in_ledger(database_url, [a.txn_id for a in acks], 30)
        ledger_verdict = compare(acks, await ledger_rows(database_url))
        assert ledger_verdict.ok, ledger_verdict.summary()
        assert not ledger_verdict.unacknowledged, ledger_verdict.summary()
        code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
        assert code == 0, report
        print(
            f"{acked_at_kill} acknowledged before the kill, all survived; first 201"
            f" {first_ack - up_at:.2f} s after Redis answered again"
            f" ({up_at - killed_at:.1f} s after the kill); failed attempts"
            f" {dict(stats.failures)}; {ledger_verdict.summary()}"
        )
