"""What the cluster fault tests (tests/faults/test_cluster_*.py) share: the bucket's slot
and the node that holds it, conservation read in one atomic snapshot on that node, the
redirections a node answered, a replica's promotion and a killed primary's return as its
replica, and the checks made after the load.

With one bucket every money key carries the hash tag ``{b0}`` and lives in one slot, so one
primary holds all the money, and a plain client of that node (no redirections followed)
reads it all.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.cluster import ask
from tests.support.faults.checks import (
    check_stream_and_balances,
    compare,
    ledger_rows,
    wait_until_in_ledger,
)
from tests.support.faults.load import LoadStats
from tests.support.faults.procs import HOST, RedisServer, run_wallet

# The slot of every money key: redis keyslot of the bucket's hash tag.
MONEY_SLOT = key_slot(f"{{b{BUCKET}}}".encode())
LEDGER_LIMIT_S = 60.0
# A replica promoted once its primary is down for NODE_TIMEOUT_MS; a killed primary started
# again rejoins as its replica.
PROMOTION_LIMIT_S = 30.0
REJOIN_LIMIT_S = 30.0
POLL_S = 0.05


def node(server: RedisServer) -> RedisClient:
    """An asyncio client of one node; the caller closes it."""
    return Redis(host=HOST, port=server.port)


@dataclass(frozen=True, slots=True)
class Conservation:
    balances_kopecks: int
    deposits_kopecks: int
    transactions: int

    @property
    def holds(self) -> bool:
        return self.balances_kopecks == self.deposits_kopecks


async def conservation(owner: RedisServer, user_ids: list[int]) -> Conservation:
    """Σ balances and Σ deposits in the stream, read in one MULTI on the slot's owner: one
    instant, whatever the load is doing meanwhile."""
    client = node(owner)
    try:
        async with client.pipeline(transaction=True) as pipe:
            for user_id in user_ids:
                pipe.hget(keyspace.user(user_id), "balance_kopecks")
            pipe.xrange(keyspace.txn_stream(BUCKET))
            replies = await pipe.execute()
    finally:
        await client.aclose()
    balances = cast(list[bytes | None], replies[:-1])
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], replies[-1])
    txns = [Transaction.from_stream_fields(fields) for _, fields in entries]
    deposits = sum(t.amount_kopecks for t in txns if t.kind == "deposit")
    return Conservation(sum(int(b or 0) for b in balances), deposits, len(entries))


def redirections(server: RedisServer) -> dict[str, int]:
    """The MOVED, ASK and TRYAGAIN replies ``server`` has given since it started
    (INFO errorstats)."""
    info = cast(dict[str, dict[str, int]], ask(server, "INFO", "errorstats"))
    return {
        name: int(info.get(f"errorstat_{name}", {}).get("count", 0))
        for name in ("MOVED", "ASK", "TRYAGAIN")
    }


async def check_everything_acknowledged_once(
    stats: LoadStats,
    owner: RedisServer,
    user_ids: list[int],
    database_url: str,
    env: dict[str, str],
) -> tuple[int, int]:
    """After the load: every request answered, no id given twice, every 201 in the stream
    and in the ledger exactly once (nothing stored that no 201 names), balances = the
    stream's replay, conservation, reconcile clean. Returns (ledger rows, seconds the last
    201 took to reach the ledger)."""
    acks = list(stats.acks.values())
    assert not stats.unanswered, list(stats.unanswered)[:5]
    assert not stats.conflicting_replays, stats.conflicting_replays[:5]
    assert len({ack.txn_id for ack in acks}) == len(acks), "an id was given to two 201s"
    client = node(owner)
    try:
        await check_stream_and_balances(client, acks, user_ids)
        assert not await client.exists(keyspace.txn_dead_letter(BUCKET))
    finally:
        await client.aclose()
    money = await conservation(owner, user_ids)
    assert money.holds, money
    assert money.deposits_kopecks == sum(a.amount for a in acks if a.kind == "deposit")
    to_ledger_s = await wait_until_in_ledger(
        database_url, [ack.txn_id for ack in acks], LEDGER_LIMIT_S
    )
    ledger = await ledger_rows(database_url)
    verdict = compare(acks, ledger)
    assert verdict.ok, verdict.summary()
    assert not verdict.unacknowledged, verdict.summary()
    assert len({row.txn_id for row in ledger}) == len(ledger)
    reconciled, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], env)
    assert reconciled == 0, report
    return len(ledger), round(to_ledger_s)


async def wait_until_primary(server: RedisServer) -> None:
    """Until ``server`` (a replica) has been promoted by the cluster."""
    deadline = time.monotonic() + PROMOTION_LIMIT_S
    while await _role(server) != "master":
        assert time.monotonic() < deadline, f"{server.name} not promoted in {PROMOTION_LIMIT_S} s"
        await asyncio.sleep(POLL_S)


async def wait_until_replica_of(server: RedisServer, primary: RedisServer) -> str:
    """Until ``server`` copies ``primary``: by itself (the cluster tells a returning primary
    that its slots have a newer owner), or told CLUSTER REPLICATE after half the limit;
    returns which."""
    started = time.monotonic()
    told = False
    while True:
        info = await _replication(server)
        if info.get("master_port") == primary.port and info.get("master_link_status") == "up":
            return "told CLUSTER REPLICATE" if told else "by itself"
        elapsed = time.monotonic() - started
        assert elapsed < REJOIN_LIMIT_S, f"{server.name} not a replica again: {info}"
        if not told and info and elapsed > REJOIN_LIMIT_S / 2:
            primary_id = (await asyncio.to_thread(ask, primary, "CLUSTER", "MYID")).decode()
            await asyncio.to_thread(ask, server, "CLUSTER", "REPLICATE", primary_id)
            told = True
        await asyncio.sleep(POLL_S)


async def _replication(server: RedisServer) -> dict[str, object]:
    client = Redis(host=HOST, port=server.port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return cast(dict[str, object], await client.info("replication"))
    except (RedisError, OSError):  # not started yet, or still loading its files
        return {}
    finally:
        await client.aclose()


async def _role(server: RedisServer) -> object:
    return (await _replication(server)).get("role")
