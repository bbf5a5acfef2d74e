"""Redis/Valkey Cluster (service/redis/cluster.py) on a real cluster of the test's own
(tests/support/cluster.py): script calls go to the primary of their keys' slot, batched per
node, each with the outcome it would have on one Redis; MOVED, ASK and TRYAGAIN are followed
(the script did not run), and nothing is ever run twice. The scripts are the test's own
(tests/cluster_lua/), not the wallet's."""

import asyncio
import hashlib
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.outages import is_outage
from service.redis import cluster as cluster_module
from service.redis.client import connect_redis
from service.redis.cluster import (
    CALL_ATTEMPTS,
    ClusterScriptCalls,
    ClusterUnavailable,
    CrossSlotCall,
)
from service.redis.counter_history import follow_primary
from service.redis.pipelining import ReplyLost, script_calls
from service.redis.pools import CheckedConnection
from service.redis.scripts import LuaScript, load_script_source
from service.settings import Settings
from tests.support.cluster import ClusterDeployment, cluster_deployment, node_client
from tests.support.faults.procs import HOST, Processes, RedisServer

SCRIPTS = Path(__file__).parent / "cluster_lua"


def slot(key: str) -> int:
    return key_slot(key.encode())


def value(server: RedisServer, key: str) -> bytes | None:
    """``key`` on ``server``, whatever its role: READONLY lets a replica answer, ASKING the
    target of a migration (on the same connection: a pipeline)."""
    client = node_client(server)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.readonly()
        pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
        pipe.get(key)
        reply: bytes | None = pipe.execute()[-1]
        return reply
    finally:
        client.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    """A cluster for the tests that leave its slots and nodes as they found them."""
    with cluster_deployment(tmp_path_factory.mktemp("cluster")) as deployment:
        yield deployment


@pytest.fixture
def own(tmp_path: Path) -> Iterator[ClusterDeployment]:
    """A cluster for one test that moves slots or stops nodes."""
    with cluster_deployment(tmp_path / "cluster") as deployment:
        yield deployment


@asynccontextmanager
async def _connected(deployment: ClusterDeployment, **settings: Any) -> AsyncIterator[RedisCluster]:
    client = connect_redis(Settings(redis_url=deployment.url(), **settings))
    assert isinstance(client, RedisCluster)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def client(shared: ClusterDeployment) -> AsyncIterator[RedisCluster]:
    async with _connected(shared) as client:
        yield client


@pytest.fixture
async def own_client(own: ClusterDeployment) -> AsyncIterator[RedisCluster]:
    async with _connected(own) as client:
        yield client


def fresh(prefix: str) -> str:
    """A key prefix no other test of the shared cluster uses."""
    return f"{prefix}-{asyncio.get_running_loop().time()}"


async def test_calls_on_many_slots_land_on_their_primaries_one_batch_per_node(
    shared: ClusterDeployment, client: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = LuaScript(client, "count", root=SCRIPTS)
    await count.load()  # on every primary (RedisCluster sends SCRIPT LOAD to each)
    sha = hashlib.sha1(load_script_source("count", SCRIPTS).encode()).hexdigest()
    for server in shared.primaries:
        assert node_client(server).script_exists(sha) == [True]
    batches: Counter[int] = Counter()  # pipelined writes by port
    send = CheckedConnection.send_packed_command

    async def counted(self: CheckedConnection, command: Any, check_health: bool = True) -> None:
        if isinstance(command, bytes):  # a batch (redis-py's own commands are lists of parts)
            batches[int(self.port)] += 1
        await send(self, command, check_health)

    monkeypatch.setattr(CheckedConnection, "send_packed_command", counted)
    prefix = fresh("many")
    keys = [f"{{{prefix}{n}}}:count" for n in range(150)]
    replies = await asyncio.gather(*(count([key], []) for key in keys))
    assert replies == [1] * len(keys)
    owners = {key: shared.owner(slot(key)) for key in keys}
    assert {server.port for server in owners.values()} == {p.port for p in shared.primaries}
    for key, owner in owners.items():
        assert value(owner, key) == b"1"
    # Some 50 calls per primary, all made in one turn of the event loop: one write each.
    assert batches == Counter({server.port: 1 for server in shared.primaries})


async def test_a_command_routed_by_key_works_after_a_first_script_call(
    shared: ClusterDeployment, client: RedisCluster
) -> None:
    """The router reads the slot map for the first script call; the client's own commands
    (their slot from redis-py's command parser) still work after it: `wallet rebuild`
    starts with a script call, then XGROUP CREATE. The script is loaded already (by another
    client), so the first call sends nothing else."""
    await LuaScript(client, "count", root=SCRIPTS).load()
    async with _connected(shared) as first:
        key = fresh("{first}")
        assert await LuaScript(first, "count", root=SCRIPTS)([key], []) == 1
        assert await first.xgroup_create(f"{key}:stream", "group", id="0", mkstream=True)


async def test_an_error_reply_goes_to_its_call_alone(client: RedisCluster) -> None:
    count = LuaScript(client, "count", root=SCRIPTS)
    prefix = fresh("error")
    await client.set(f"{{{prefix}1}}:text", "not a number")
    replies = await asyncio.gather(
        count([f"{{{prefix}0}}:n"], []),
        count([f"{{{prefix}1}}:text"], []),
        count([f"{{{prefix}2}}:n"], []),
        return_exceptions=True,
    )
    assert replies[0] == 1
    assert isinstance(replies[1], ResponseError)
    assert "not an integer" in str(replies[1])
    assert replies[2] == 1


async def test_a_script_flushed_on_one_node_is_loaded_again_and_runs_once(
    shared: ClusterDeployment, client: RedisCluster
) -> None:
    count = LuaScript(client, "count", root=SCRIPTS)
    key = f"{{{fresh('flush')}}}:n"
    assert await count([key], []) == 1
    owner = shared.owner(slot(key))
    node_client(owner).script_flush()  # as a restart or a failover of that node
    assert await count([key], []) == 2
    assert value(owner, key) == b"2"


async def test_a_call_whose_keys_span_slots_is_refused_before_sending(
    shared: ClusterDeployment, client: RedisCluster
) -> None:
    count = LuaScript(client, "count", root=SCRIPTS)
    prefix = fresh("cross")
    keys = [f"{{{prefix}a}}:n", f"{{{prefix}b}}:n"]
    assert slot(keys[0]) != slot(keys[1])
    with pytest.raises(CrossSlotCall, match="one hash slot"):
        await count(keys, [])
    with pytest.raises(CrossSlotCall):
        await count([], [])  # no key: no node to run it
    for key in keys:
        assert value(shared.owner(slot(key)), key) is None


async def test_a_moved_slot_is_followed_to_its_new_primary(
    own: ClusterDeployment, own_client: RedisCluster
) -> None:
    count = LuaScript(own_client, "count", root=SCRIPTS)
    key = "{moved}:n"
    assert await count([key], []) == 1
    source = own.owner(slot(key))
    target = next(server for server in own.primaries if server is not source)
    await asyncio.to_thread(own.move_slot, slot(key), target)
    assert await count([key], []) == 2  # MOVED by the source; the slot map patched
    assert value(target, key) == b"2"
    assert await count([key], []) == 3  # straight to the target now
    assert value(target, key) == b"3"


async def test_calls_during_a_migration_follow_ask_and_wait_out_tryagain(
    own: ClusterDeployment, own_client: RedisCluster
) -> None:
    count = LuaScript(own_client, "count", root=SCRIPTS)
    moved, split = ["{mig}:a", "{mig}:b"], ["{mig}:c", "{mig}:d"]
    assert await count(moved, []) == 1
    assert await count(split, []) == 1
    source = own.owner(slot(moved[0]))
    target = next(server for server in own.primaries if server is not source)
    own.begin_slot_migration(slot(moved[0]), source, target)

    # Both keys on the target already: the source answers ASK, the target runs it.
    own.migrate_keys(source, target, moved)
    assert await count(moved, []) == 2
    assert [value(target, key) for key in moved] == [b"2", b"2"]

    # Keys split between the two: TRYAGAIN until the second one has moved too.
    own.migrate_keys(source, target, split[:1])
    waiting = asyncio.create_task(count(split, []))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    own.migrate_keys(source, target, split[1:])
    assert await waiting == 2
    assert [value(target, key) for key in split] == [b"2", b"2"]  # run once

    own.finish_slot_migration(slot(moved[0]), target)
    assert await count(moved, []) == 3


async def test_keys_split_for_too_long_are_an_outage_in_which_nothing_ran(
    own: ClusterDeployment, own_client: RedisCluster
) -> None:
    count = LuaScript(own_client, "count", root=SCRIPTS)
    keys = ["{stuck}:a", "{stuck}:b"]
    assert await count(keys, []) == 1
    source = own.owner(slot(keys[0]))
    target = next(server for server in own.primaries if server is not source)
    own.begin_slot_migration(slot(keys[0]), source, target)
    own.migrate_keys(source, target, keys[:1])
    with pytest.raises(ClusterUnavailable, match=f"{CALL_ATTEMPTS} times") as stuck:
        await count(keys, [])
    assert is_outage(stuck.value)
    assert not isinstance(stuck.value, ReplyLost)
    assert (value(target, keys[0]), value(source, keys[1])) == (b"1", b"1")


async def test_a_node_that_stops_answering_leaves_its_calls_unknown_and_others_answered(
    own: ClusterDeployment,
) -> None:
    async with _connected(own, redis_socket_timeout_ms=500) as client:
        calls = script_calls(client)
        keys = [f"{{hang{n}}}:n" for n in range(30)]
        command = "return redis.call('INCR', KEYS[1])"
        assert await asyncio.gather(*(calls.call(("EVAL", command, 1, k)) for k in keys)) == [
            1
        ] * len(keys)
        paused = own.owner(slot(keys[0]))
        paused.pause()
        try:
            replies = await asyncio.gather(
                *(calls.call(("EVAL", command, 1, key)) for key in keys), return_exceptions=True
            )
        finally:
            paused.resume()
    for key, reply in zip(keys, replies, strict=True):
        if own.owner(slot(key)) is paused:
            assert isinstance(reply, ReplyLost), reply
        else:
            assert reply == 2
    # Sent, and run once the node went on: "unknown", never sent again.
    for key in keys:
        assert value(own.owner(slot(key)), key) == b"2"


async def test_a_node_that_is_down_fails_its_calls_before_sending(
    own: ClusterDeployment, own_client: RedisCluster
) -> None:
    calls = script_calls(own_client)
    keys = [f"{{down{n}}}:n" for n in range(30)]
    command = "return redis.call('INCR', KEYS[1])"
    await asyncio.gather(*(calls.call(("EVAL", command, 1, key)) for key in keys))
    owners = {key: own.owner(slot(key)) for key in keys}  # asked before a node stops
    stopped = owners[keys[0]]
    stopped.stop(signal.SIGTERM)
    for count in (2, 3):
        replies = await asyncio.gather(
            *(calls.call(("EVAL", command, 1, key)) for key in keys), return_exceptions=True
        )
        for key, reply in zip(keys, replies, strict=True):
            if owners[key] is not stopped:
                assert reply == count
            elif count == 2:
                # Written to the connection the server had closed: whether it ran is unknown
                # to the client (ReplyLost), or the write itself failed.
                assert isinstance(reply, RedisConnectionError), reply
            else:
                # That connection is closed now; a new one is refused: nothing was sent.
                assert isinstance(reply, RedisConnectionError), reply
                assert not isinstance(reply, ReplyLost)


async def test_calls_wait_for_the_replicas_of_their_own_primary(tmp_path: Path) -> None:
    with cluster_deployment(tmp_path / "cluster", replicas=True) as deployment:
        async with _connected(deployment, redis_min_replicas=1) as client:
            count = LuaScript(client, "count", root=SCRIPTS)
            keys = [f"{{wait{n}}}:n" for n in range(30)]
            replies = await asyncio.gather(
                *(count([key], [], wait_for_replicas=True) for key in keys)
            )
        assert replies == [1] * len(keys)
        for shard in deployment.shards:
            assert shard.replica is not None
            for key in keys:
                if shard.first_slot <= slot(key) <= shard.last_slot:
                    assert value(shard.replica, key) == b"1"


def _role(server: RedisServer) -> str:
    return str(node_client(server).info("replication")["role"])


async def _fail_over(replica: RedisServer, primary: RedisServer) -> None:
    """CLUSTER FAILOVER on a replica, copying its primary: the two swap roles, gracefully."""
    node_client(replica).execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]
    for _ in range(400):
        status = node_client(primary).info("replication")
        if _role(replica) == "master" and status.get("master_link_status") == "up":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.name} and {primary.name} did not swap roles")


async def test_a_node_demoted_and_promoted_again_is_checked_again_before_its_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node keeps its clients across a demotion and a promotion; its history (and so
    perhaps its id counters) changed meanwhile: the connection checks it again before it
    carries another call (ScriptConnection)."""
    checked: list[str] = []

    async def recording(connection: Any, *, cluster: bool) -> str:
        replid = await follow_primary(connection, cluster=cluster)
        checked.append(replid)
        return replid

    monkeypatch.setattr(cluster_module, "follow_primary", recording)
    monkeypatch.setattr(cluster_module, "HISTORY_CHECK_INTERVAL_S", 0.0)
    with cluster_deployment(tmp_path / "cluster", replicas=True) as deployment:
        key = "{history}:n"
        shard = next(s for s in deployment.shards if s.first_slot <= slot(key) <= s.last_slot)
        assert shard.replica is not None
        async with _connected(deployment) as client:
            count = LuaScript(client, "count", root=SCRIPTS)
            assert await count([key], []) == 1
            assert len(checked) == 1
            await _fail_over(shard.replica, shard.primary)
            await _fail_over(shard.primary, shard.replica)
            deployment.wait_until_agreed()
            assert await count([key], []) == 2
    assert len(checked) == 2, checked
    assert checked[1] != checked[0]  # the promoted node's new history was checked


async def test_a_node_that_serves_no_slot_any_more_has_its_connections_closed(
    tmp_path: Path,
) -> None:
    """After a failover the old primary serves no slot: the MOVED it answers (or the read of
    the slot map after it refused a call as a replica) retires the router's pipeline to it."""
    with cluster_deployment(tmp_path / "cluster", replicas=True) as deployment:
        shard = deployment.shards[0]
        assert shard.replica is not None
        names = (f"{{retire{n}}}:n" for n in range(400))
        keys = [k for k in names if shard.first_slot <= slot(k) <= shard.last_slot]
        old_name = f"{HOST}:{shard.primary.port}"
        async with _connected(deployment) as client:
            calls = script_calls(client)
            assert isinstance(calls, ClusterScriptCalls)
            count = LuaScript(client, "count", root=SCRIPTS)
            assert await count([keys[0]], []) == 1
            old = calls._pipelines[old_name]
            await _fail_over(shard.replica, shard.primary)
            outages: list[RedisConnectionError] = []  # the old node refused as a replica
            for key in keys[1:4]:
                try:
                    await count([key], [])
                except RedisConnectionError as error:
                    outages.append(error)
                if old_name not in calls._pipelines:
                    break
            assert all(is_outage(error) for error in outages), outages
            assert old_name not in calls._pipelines
            await asyncio.gather(*calls._retiring)
            assert not any(connection.is_connected for connection in old._connections)
            assert await count([keys[0]], []) == 2  # on the new primary


def test_a_node_whose_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    """A port free when chosen and taken before the node binds it (as another process's
    outgoing connection can, in `.ci/run`): the node starts again on new ports and the
    cluster forms."""
    processes = Processes(tmp_path)
    try:
        deployment = ClusterDeployment(processes, replicas=False)
        taken = deployment.primaries[0].port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
            thief.bind((HOST, taken))
            thief.listen()
            deployment.start()
        assert deployment.primaries[0].port != taken
        assert node_client(deployment.primaries[0]).cluster("info")["cluster_state"] == "ok"
    finally:
        processes.close()
