"""Redis (an instance of the test's own) lost entirely under load, data directory and all.
The operator's procedure: stop the API and the writer, start an empty Redis, `wallet
rebuild`, start the API and the writer. Then reconcile is clean, new transaction ids never
collide with stored ones, and the Idempotency-Keys of stored transactions still hold.

What the writer had not stored when Redis went is lost: there is no copy of it anywhere
(without the append-only file, the contract promises nothing for it). The test checks that
exactly that tail, and nothing else, is missing, and that the ids its 201s named are
never issued again (the writer is paused just before the loss, so that tail is there)."""

import asyncio
import time

from redis.asyncio import Redis

from tests.support.faults.checks import (
    compare,
    ledger_ids,
    ledger_rows,
    redis_balances,
    wait_until_in_ledger,
)
from tests.support.faults.load import LoadDriver, Loader, Request
from tests.support.faults.procs import Processes, RedisServer, run_wallet, wallet_env

DEPOSIT = "/api/balance/deposit/"
# How long the writer is paused before Redis is lost: what is acknowledged meanwhile is the
# unpersisted tail that goes with Redis.
WRITER_BEHIND_S = 0.5


async def test_redis_lost_rebuild_then_reconcile_is_clean_and_ids_never_collide(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    env = wallet_env(own_redis.url, database_url)
    async with asyncio.timeout(150):
        serve = processes.serve(env, name="serve-1")
        await serve.start()
        writer = processes.writer(env, name="writer-1")
        writer.start()
        async with LoadDriver(serve.base_url, prefix="rl", seed=5) as driver:
            await driver.add_users(20)
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(2.0)
                # Some of it in the ledger (a loaded machine may start the writer late).
                first = min(a.txn_id for a in driver.stats.acks.values())
                await wait_until_in_ledger(database_url, [first], 30)
                writer.pause()  # what is acknowledged from now on is not in the ledger
                await asyncio.sleep(WRITER_BEHIND_S)
                lost_wall = time.time()
                own_redis.wipe()
                lost_at = time.monotonic()
                # The operator: stop the API and the writer, an empty Redis, rebuild.
                await asyncio.to_thread(serve.stop)
                writer.kill9()
                stored = await ledger_ids(database_url)
                own_redis.start()
                await own_redis.wait_ready()
                code, rebuilt = await run_wallet(["rebuild"], env)
                assert code == 0, rebuilt
                serve = processes.serve(env, name="serve-2")
                await serve.start()
                processes.writer(env, name="writer-2").start()
                driver.retarget(serve.base_url)  # the clients log in again (401) and go on
                back_at = time.monotonic()
                await asyncio.sleep(3.0)
            stats = driver.stats
            assert not stats.unanswered
            assert not stats.conflicting_replays
            # Before or after the loss by when Redis applied it (a 201 of a transaction
            # applied just before the loss may reach the client after it).
            before = [a for a in stats.acks.values() if a.created_at_us < lost_wall * 1e6]
            after = [a for a in stats.acks.values() if a.created_at_us >= lost_wall * 1e6]
            assert after, "no 201 after the rebuild"

            # Lost: exactly the unpersisted tail, the transactions after the last stored one.
            last_stored = max(stored)
            assert stored == set(range(min(stored), last_stored + 1))
            lost = sorted(a.txn_id for a in before if a.txn_id not in stored)
            assert lost, "nothing acknowledged was unpersisted at the loss: nothing to check"
            assert all(txn_id > last_stored for txn_id in lost)
            # New ids never collide with stored ones, nor with the lost ones that clients
            # hold in their 201s: no id was ever acknowledged for two transactions.
            assert min(a.txn_id for a in after) > max(a.txn_id for a in before)
            assert len({a.txn_id for a in stats.acks.values()}) == len(stats.acks)

            code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
            assert code == 0, report
            kept = [a for a in before if a.txn_id in stored]
            ledger = await ledger_rows(database_url)
            verdict = compare(kept + after, ledger)
            assert verdict.ok, verdict.summary()
            # The Idempotency-Keys of stored transactions survived the loss: a retry gets
            # the first answer and moves no money.
            redis = Redis.from_url(own_redis.url)
            try:
                user_ids = [u.id for u in driver.users]
                balances = await redis_balances(redis, user_ids)
                for ack, status, body in await driver.resend(kept[::20]):
                    assert (status, body["id"]) == (201, ack.txn_id), (ack, status, body)
                assert await redis_balances(redis, user_ids) == balances
            finally:
                await redis.aclose()
        print(
            f"{len(before)} acknowledged before the loss, {len(lost)} of them not yet"
            f" in the ledger were lost with Redis; service back {back_at - lost_at:.1f} s after"
            f" the loss; {len(after)} new transactions from id {min(a.txn_id for a in after)}"
            f" (last stored {last_stored}, last acknowledged before the loss"
            f" {max(a.txn_id for a in before)})"
        )


async def test_redis_lost_under_a_running_api_never_loses_an_acknowledged_deposit(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    """Between the loss and the operator's rebuild the API may refuse money (503) or take
    it, but a deposit it acknowledges must reach the ledger."""
    _, database_url = shared_servers
    env = wallet_env(own_redis.url, database_url)
    async with asyncio.timeout(90):
        serve = processes.serve(env)
        await serve.start()
        writer = processes.writer(env)
        writer.start()
        async with LoadDriver(serve.base_url, prefix="rb", give_up_after_s=5) as driver:
            await driver.add_users(2)
            alice, bob = driver.users
            for n in range(3):
                deposit = Request(f"before-{n}", alice.id, DEPOSIT, {"amount": 100 * (n + 1)})
                assert await driver.send(deposit) == 201
            stored_before = [a.txn_id for a in driver.stats.acks.values()]
            await wait_until_in_ledger(database_url, stored_before, 10)

            own_redis.wipe()  # Redis lost; the API and the writer keep running
            own_redis.start()
            await own_redis.wait_ready()
            try:
                await driver.login(bob, retry_for_s=5)  # his session went with Redis
            except AssertionError:
                return  # the service refuses logins until it is rebuilt: nothing to lose
            after = Request("after-the-loss", bob.id, DEPOSIT, {"amount": 5000})
            if await driver.send(after) != 201:
                return  # refused (e.g. 503 until rebuilt): nothing was acknowledged
            ack = driver.stats.acks[after.key]
            await asyncio.sleep(3.0)  # the writer has had time to store it
            await asyncio.to_thread(serve.stop)
            await asyncio.to_thread(writer.stop)
            code, output = await run_wallet(["rebuild"], env)
            assert code == 0, output
        stored = {row.txn_id: row for row in await ledger_rows(database_url)}
        assert ack.txn_id in stored
        assert stored[ack.txn_id].matches(ack), (
            f"acknowledged deposit {ack} is not in the ledger;"
            f" id {ack.txn_id} there is {stored.get(ack.txn_id)}"
        )
