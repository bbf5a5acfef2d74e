"""A Valkey Cluster (three primaries, a replica each: tests/support/cluster.py) under load
(`wallet serve --workers 2` and `wallet writer` as real processes on a redis+cluster:// URL,
WALLET_REDIS_MIN_REPLICAS=1): the primary of the money's slot ``{b0}`` is killed with
SIGKILL, the cluster promotes its replica by itself (NODE_TIMEOUT_MS), the killed node is
started again and rejoins as the new primary's replica, the load goes on.

The replica copies its primary through a proxy that delays the stream by
``REPLICA_BEHIND_S`` (the primary announces the proxy's port, so its replica reconnects
through it; clients go through it too, undelayed): a busy or distant link. The kill drops
what the proxy holds, so the promoted replica lacks the old
primary's last transactions, none of them acknowledged (N=1), and its id counter is behind
the ids they were given: the service must start it in a new epoch (counter_history.py).

Afterwards: no acknowledged transaction lost, every 201 in the stream and the ledger
exactly once, conservation, reconcile clean; and no id the old primary gave (read from its
append-only file, loaded into a server of its own after the kill) is given by the new
primary to another transaction.
"""

import asyncio
import shutil
import time
from typing import cast

from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.transactions import Transaction
from service.redis import keyspace
from tests.support.buckets import BUCKET
from tests.support.cluster import ClusterDeployment, ask
from tests.support.faults.cluster_money import (
    MONEY_SLOT,
    POLL_S,
    REJOIN_LIMIT_S,
    check_everything_acknowledged_once,
    node,
    wait_until_primary,
    wait_until_replica_of,
)
from tests.support.faults.load import LoadDriver, Loader
from tests.support.faults.procs import (
    DelayProxy,
    Processes,
    RedisServer,
    wallet_env,
)

LOAD_BEFORE_S = 2.0
REPLICA_BEHIND_S = 0.2
LOAD_AFTER_S = 3.0
TEST_LIMIT_S = 150.0


async def test_the_money_primary_killed_under_load_and_its_replica_promoted(
    processes: Processes, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    deployment = ClusterDeployment(processes, replicas=True)
    env = wallet_env(deployment.url(), database_url, redis_min_replicas="1")
    async with asyncio.timeout(TEST_LIMIT_S):
        await asyncio.to_thread(deployment.start)
        old = deployment.owner(MONEY_SLOT)
        replica = next(s.replica for s in deployment.shards if s.primary is old)
        assert replica is not None
        async with DelayProxy(
            old.port, delay_s=REPLICA_BEHIND_S, only_replication=True
        ) as replica_link:
            await _replicate_through(old, replica, replica_link.port)
            serve = processes.serve(env)
            await serve.start()
            processes.writer(env).start()
            async with LoadDriver(serve.base_url, prefix="cfo", seed=17) as driver:
                await driver.add_users(20)
                user_ids = [user.id for user in driver.users]
                async with Loader(driver, concurrency=16):
                    await asyncio.sleep(LOAD_BEFORE_S)
                    old.kill9()
                    replica_link.drop_connections()  # what it held back dies with the primary
                    killed_at = time.monotonic()
                    old_history = await _old_primary_stream(processes, old)
                    await wait_until_primary(replica)
                    promoted_at = time.monotonic()
                    old.start()  # its nodes.conf and append-only file
                    rejoined_by = await wait_until_replica_of(old, replica)
                    rejoined_at = time.monotonic()
                    await asyncio.sleep(LOAD_AFTER_S)
                stats = driver.stats
        acks = list(stats.acks.values())
        first_201_after_kill = stats.first_ack_after(killed_at)
        assert first_201_after_kill is not None, "no 201 after the failover"
        ledger_rows, to_ledger_s = await check_everything_acknowledged_once(
            stats, replica, user_ids, database_url, env
        )
        assert stats.failures["500"] == 0, dict(stats.failures)
        new_history = await _stream(replica)
        reissued = _ids_given_twice(old_history, new_history)
        old_epoch = max(old_history) // TXN_IDS_PER_EPOCH
        by_new = [t.txn_id for t in new_history.values() if not _same(t, old_history)]
        # Made by the old primary and not copied to its replica (none acknowledged: a retry
        # with its key may have applied it again on the new primary, under another id).
        lost_unacknowledged = [t for t in old_history.values() if not _same(t, new_history)]
        print(
            f"{len(acks)} acknowledged; after the kill: replica promoted in"
            f" {promoted_at - killed_at:.1f} s, first 201 in"
            f" {first_201_after_kill - killed_at:.1f} s, old primary a replica again in"
            f" {rejoined_at - killed_at:.1f} s ({rejoined_by}); 503s"
            f" {stats.failures['503']}, failed attempts {dict(stats.failures)}, refusals"
            f" {dict(stats.refusals)}; the old primary's last {len(lost_unacknowledged)}"
            f" transactions (unacknowledged) are not on the new primary; ids given twice"
            f" {len(reissued)}; the new primary's first id {min(by_new)}; ledger"
            f" {ledger_rows} rows ({to_ledger_s} s to reach it)"
        )
        # Every id the new primary gave is in an epoch above the old primary's.
        assert by_new, "no transaction made on the new primary"
        assert min(by_new) // TXN_IDS_PER_EPOCH > old_epoch, (old_epoch, min(by_new))
        assert not reissued, (
            f"the new primary gave {len(reissued)} ids the old primary had given to other"
            f" transactions, e.g. {reissued[:5]}"
        )


async def _replicate_through(primary: RedisServer, replica: RedisServer, proxy_port: int) -> None:
    """The primary announces the proxy's port; its replica, told so by the cluster bus,
    reconnects through the proxy."""
    await asyncio.to_thread(ask, primary, "CONFIG", "SET", "cluster-announce-port", proxy_port)
    deadline = time.monotonic() + REJOIN_LIMIT_S
    while True:
        info = await asyncio.to_thread(ask, replica, "INFO", "replication")
        if info.get("master_port") == proxy_port and info.get("master_link_status") == "up":
            return
        assert time.monotonic() < deadline, f"{replica.name} not through the proxy: {info}"
        await asyncio.sleep(POLL_S)


async def _old_primary_stream(processes: Processes, old: RedisServer) -> dict[int, Transaction]:
    """What the killed primary had written (appendfsync always: every command it ran): its
    data directory copied, loaded into a standalone server of the test's own."""
    copy = processes.redis("old-primary-copy")
    shutil.copytree(old.directory / "appendonlydir", copy.directory / "appendonlydir")
    copy.start()
    await copy.wait_ready()
    try:
        return await _stream(copy)
    finally:
        copy.stop_server()


async def _stream(server: RedisServer) -> dict[int, Transaction]:
    client = node(server)
    try:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await client.xrange(keyspace.txn_stream(BUCKET)),
        )
    finally:
        await client.aclose()
    txns = [Transaction.from_stream_fields(fields) for _, fields in entries]
    return {txn.txn_id: txn for txn in txns}


def _ids_given_twice(
    old: dict[int, Transaction], new: dict[int, Transaction]
) -> list[tuple[int, str | None, str | None]]:
    """Ids in both histories naming different transactions: (id, old key, new key)."""
    return [
        (txn_id, txn.idempotency_key, new[txn_id].idempotency_key)
        for txn_id, txn in sorted(old.items())
        if txn_id in new and _identity(new[txn_id]) != _identity(txn)
    ]


def _same(txn: Transaction, history: dict[int, Transaction]) -> bool:
    """``history`` holds ``txn`` under its id."""
    other = history.get(txn.txn_id)
    return other is not None and _identity(other) == _identity(txn)


def _identity(txn: Transaction) -> tuple[object, ...]:
    return (txn.kind, txn.from_user_id, txn.to_user_id, txn.amount_kopecks, txn.idempotency_key)
