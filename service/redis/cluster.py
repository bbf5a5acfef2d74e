"""Redis/Valkey Cluster (``redis+cluster://``): redis-py's RedisCluster for every command but
the scripts, whose calls are auto-pipelined per primary.

Every key of a script call shares one hash slot (the wallet's keys carry a hash tag); the
call goes to the auto-pipeline (pipelining.py) of the primary that serves that slot, one
AutoPipeline per primary, each with its own connections, batches and replica wait (WAIT and
WAITAOF go to that primary's replicas). A call whose keys span slots is a bug: refused
before anything is sent (CrossSlotCall). Each call keeps the outcome it has on a single
Redis: an error reply to it alone, an outage before the write to its whole batch, ReplyLost
after it.

The cluster may answer that a call is not that node's to run. Each of these answers means
the script did not run, so the call is sent again, at most CALL_ATTEMPTS times in all, then
raised as ClusterUnavailable (an outage in which nothing ran):

- MOVED: the slot has a new owner (a slot moved, a failover). redis-py's slot map is patched
  with it (NodesManager.move_slot; after a failover, every slot of the range the promoted
  replica shared with its old primary) and the call goes to the new owner's pipeline.
- ASK: the slot is migrating and the call's keys are on the target already. The target
  runs the call only right after ASKING on the same connection: the two are sent together
  on a connection of their own (ASK lasts only while a slot moves, key by key).
- TRYAGAIN: the slot is migrating and the call's keys are split between the two nodes. It
  is sent again (to the slot's owner, which may have changed) after a backoff that doubles
  from TRYAGAIN_FIRST_BACKOFF_MS.

CLUSTERDOWN (slots not served) is ClusterUnavailable at once. A call that failed on a
connection (an outage, or ReplyLost: never sent again, it may have run) makes the next call
read the slot map again: the node may have failed over. After a MOVED or a read of the map,
the pipeline of every node that no longer serves a slot as primary (a node demoted or gone)
is retired: its connections close once its calls in flight have their replies.

NOSCRIPT: the script cache is per node. LuaScript.load sends SCRIPT LOAD through
RedisCluster, which sends it to every primary (redis-py's command flags route SCRIPT LOAD to
PRIMARIES), so the node that answered NOSCRIPT has it when the call is sent again.
"""

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from service.redis.counter_history import follow_primary, replication
from service.redis.pipelining import Arg, AutoPipeline
from service.redis.pools import CheckedConnection

log = logging.getLogger("wallet.redis")

# How often an open connection of the script calls asks whether its node is still the
# primary it checked (ScriptConnection): the longest a connection may carry money calls to
# a node whose history changed under it.
HISTORY_CHECK_INTERVAL_S = 1.0
# Sends of one call (the first and those after MOVED, ASK, TRYAGAIN) before ClusterUnavailable.
CALL_ATTEMPTS = 8
# TRYAGAIN lasts while a migration has moved some keys of a hash tag and not the others:
# MIGRATE moves a few keys at once, well under a millisecond each. 5, 10, 20... 200 ms: the
# attempts wait about half a second in all.
TRYAGAIN_FIRST_BACKOFF_MS = 5
TRYAGAIN_MAX_BACKOFF_MS = 200
# Commands whose layout is NAME, script or function, number of keys, keys..., args...
_SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})

# A new auto-pipeline whose connections go to (host, port).
NewPipeline = Callable[[str, int], AutoPipeline]


class ClusterUnavailable(RedisConnectionError):
    """The cluster did not run a call: its slots are not all served (CLUSTERDOWN), the slot
    map cannot be read, or the call was redirected or told to try again too many times. An
    outage (a ConnectionError), never ReplyLost: nothing ran."""


class CrossSlotCall(Exception):
    """A script call whose keys are in more than one hash slot, or that has no key: no node
    could run it. A bug in the caller's keys, refused before anything is sent."""


class ClusterScriptCalls:
    """The script calls of a cluster client: each to the auto-pipeline of the primary that
    serves its slot (see the module's docstring)."""

    def __init__(self, cluster: RedisCluster, new_pipeline: NewPipeline) -> None:
        self._cluster = cluster
        self._new_pipeline = new_pipeline
        self._pipelines: dict[str, AutoPipeline] = {}  # by node name, host:port
        # The pipelines of departed nodes, each closing (close_when_idle) in its task.
        self._retiring: dict[asyncio.Task[None], AutoPipeline] = {}
        self._retire_scheduled = False
        self._map_stale = True  # nothing read yet
        self._map_read: asyncio.Task[None] | None = None

    async def call(self, command: Sequence[Arg], *, wait_for_replicas: bool = False) -> Any:
        """As AutoPipeline.call, on the node that serves the call's slot; raises
        CrossSlotCall (nothing sent) and ClusterUnavailable (nothing ran) besides."""
        slot = self._slot(command)
        asking: tuple[str, int] | None = None
        backoff_ms = 0
        for attempt in range(CALL_ATTEMPTS):
            if backoff_ms:
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = 0
            try:
                if asking is not None:
                    return await self._call_asking(asking, command, wait_for_replicas)
                pipeline = await self._pipeline(slot)
                return await pipeline.call(command, wait_for_replicas=wait_for_replicas)
            except MovedError as moved:  # before AskError: MovedError is one
                asking = None
                await self._cluster.nodes_manager.move_slot(moved)
                self._schedule_retire()
            except AskError as ask:
                asking = (ask.host, ask.port)
            except TryAgainError:
                asking = None
                backoff_ms = min(TRYAGAIN_FIRST_BACKOFF_MS * 2**attempt, TRYAGAIN_MAX_BACKOFF_MS)
            except ClusterDownError as down:
                self._map_stale = True
                raise ClusterUnavailable(f"the cluster is down: {down}") from down
            except RedisConnectionError:
                # Not sent, or ReplyLost: raised as it is. The node may have failed over.
                self._map_stale = True
                raise
        raise ClusterUnavailable(
            f"slot {slot}: redirected or told to try again {CALL_ATTEMPTS} times; not run"
        )

    def _slot(self, command: Sequence[Arg]) -> int:
        name = str(command[0]).upper()
        if name not in _SCRIPT_COMMANDS:
            raise TypeError(f"only script calls are routed by their keys: {name}")
        keys = command[3 : 3 + int(command[2])]
        slots = {self._cluster.keyslot(key) for key in keys}
        if len(slots) != 1:
            raise CrossSlotCall(
                f"a script call's keys must share one hash slot: {list(keys)} are in {slots}"
            )
        return slots.pop()

    async def _pipeline(self, slot: int) -> AutoPipeline:
        """The auto-pipeline of the primary that serves ``slot``."""
        node = await self._primary(slot)
        pipeline = self._pipelines.get(node.name)
        if pipeline is None:
            pipeline = self._pipelines[node.name] = self._new_pipeline(node.host, int(node.port))
        return pipeline

    async def _primary(self, slot: int) -> ClusterNode:
        if self._map_stale:
            # One read for every call that found the map stale; they all go on in the same
            # turn of the event loop once it is read, and so share batches again. Shielded:
            # a caller cancelled meanwhile does not cancel the others' read.
            if self._map_read is None:
                self._map_read = asyncio.get_running_loop().create_task(self._read_map())
            await asyncio.shield(self._map_read)
        try:
            return self._cluster.nodes_manager.get_node_from_slot(slot)
        except SlotNotCoveredError as error:
            self._map_stale = True
            raise ClusterUnavailable(str(error)) from error

    async def _read_map(self) -> None:
        try:
            # The client's own first initialization readies its command parser too, which
            # its commands routed by key need (redis-py reads the parser before it
            # initializes, once it knows a node); then the slot map is read afresh.
            await self._cluster.initialize()
            await self._cluster.nodes_manager.initialize()
        except (RedisClusterException, RedisError) as error:
            raise ClusterUnavailable(f"the slot map cannot be read: {error}") from error
        else:
            self._map_stale = False
            self._retire_departed()
        finally:
            self._map_read = None

    def _schedule_retire(self) -> None:
        # Once per turn of the event loop: every call of a batch may have been answered MOVED.
        if not self._retire_scheduled:
            self._retire_scheduled = True
            asyncio.get_running_loop().call_soon(self._retire_departed)

    def _retire_departed(self) -> None:
        """Takes out the pipeline of every node the map no longer names as a slot's primary,
        and closes it once its calls in flight are answered. A node that is a primary again
        later gets a new pipeline (its connections check the counters as they open). A
        walk over the slot map (16,384 slots, about a millisecond), after a read of the map,
        and once per turn of the event loop in which calls were answered MOVED."""
        self._retire_scheduled = False
        slots = self._cluster.nodes_manager.slots_cache.values()
        serving = {nodes[0].name for nodes in slots if nodes}
        for name in [name for name in self._pipelines if name not in serving]:
            log.info("%s serves no slot as a primary any more; closing its connections", name)
            pipeline = self._pipelines.pop(name)
            task = asyncio.get_running_loop().create_task(pipeline.close_when_idle())
            self._retiring[task] = pipeline
            task.add_done_callback(self._retiring.pop)

    async def _call_asking(
        self, address: tuple[str, int], command: Sequence[Arg], wait_for_replicas: bool
    ) -> Any:
        """ASKING and the call, on a connection of their own to ``address``. Made in the
        same turn of the event loop, on a new pipeline, the two go in one batch, in order."""
        pipeline = self._new_pipeline(*address)
        try:
            replies: tuple[Any, ...] = await asyncio.gather(
                pipeline.call(("ASKING",)),
                pipeline.call(command, wait_for_replicas=wait_for_replicas),
                return_exceptions=True,
            )
        finally:
            await pipeline.disconnect()
        reply = replies[1]  # ASKING's is OK, or the same failure as the call's
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def disconnect(self) -> None:
        """Closes the connections of every node's pipeline, the retiring ones' included, at
        once: a call in flight on them is ReplyLost, as on the others."""
        for task in self._retiring:
            task.cancel()
        pipelines = [*self._pipelines.values(), *self._retiring.values()]
        await asyncio.gather(*(pipeline.disconnect() for pipeline in pipelines))


class ScriptConnection(CheckedConnection):
    """A connection of the script calls' pipelines: as it opens, before it carries a call,
    it checks the id counter of each bucket the node serves against the node's replication
    history (service/redis/counter_history.py). A replica promoted by a failover may lack
    the old primary's last transactions, and its counter be behind the ids they were given:
    the counter is set aside then, and money refused until the writer starts it in a new
    epoch. A slot moved to another primary looks the same (its keys come with the history of
    the node they left), and costs an epoch too.

    A node keeps its clients when it is demoted, and again when it is promoted later: so
    before a batch, once a ``HISTORY_CHECK_INTERVAL_S``, an open connection asks again, and
    opens anew (checking again) when its node is no longer the primary it checked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._replid = ""
        # None during the handshake: its replies are in flight when redis-py checks health.
        self._next_history_check_s = math.inf

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self._next_history_check_s = math.inf
        await super().on_connect_check_health(check_health)
        self._replid = await follow_primary(self, cluster=True)
        self._next_history_check_s = asyncio.get_running_loop().time() + HISTORY_CHECK_INTERVAL_S

    async def check_health(self) -> None:
        """Besides the PING of an idle connection: whether the node is still the primary
        whose history this connection checked. Nothing of the next batch was sent yet."""
        now_s = asyncio.get_running_loop().time()
        if self.is_connected and now_s >= self._next_history_check_s:
            self._next_history_check_s = now_s + HISTORY_CHECK_INTERVAL_S
            role, replid = await replication(self)
            if (role, replid) != ("master", self._replid):
                log.warning(
                    "%s:%d is a %s with replication id %s now; reconnecting",
                    self.host,
                    self.port,
                    role,
                    replid,
                )
                await self.disconnect()
                await self.open()  # checks the counters again, or refuses a replica
        await super().check_health()


class ClusterClient(RedisCluster):
    """redis-py's RedisCluster carrying the script calls' router (``auto_pipeline``, set
    once, right after it is made); closing it closes the router's connections too."""

    auto_pipeline: ClusterScriptCalls

    async def aclose(self) -> None:
        await super().aclose()
        # The router reads the slot map through the nodes manager alone; RedisCluster
        # closes the nodes only once it has initialized itself (for a command of its own).
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")
        await self.auto_pipeline.disconnect()
