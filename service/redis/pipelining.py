"""Auto-pipelining: the script calls one process makes in the same turn of its event loop
share one connection, one write and one read, as ioredis and valkey-glide do.

redis-py spends about 44 µs of CPU per call on its own (taking a pool connection, a timer
for the socket timeout, a write, a read); sent together, a batch pays most of that once
(docs/performance.md). Each call keeps its own outcome, as if sent alone:

- Redis's answer to a call, an error reply included (NOSCRIPT: the call did not run, the
  caller loads the script and sends it again), goes to that call alone;
- a failure before anything of the batch was written (no free connection, a connection
  that cannot be opened or fails its health check) is raised to every call as it is: none
  of them ran;
- a failure after the write began (a timeout, a dropped connection) leaves every call whose
  reply had not come with ``ReplyLost``: each may have run, and the money calls ask Redis
  what became of their request (service/redis/money.py).

With a replica wait (WALLET_REDIS_MIN_REPLICAS, replicas.py), a batch that holds a call made
with ``wait_for_replicas`` ends with one WAIT and WAITAOF: the replies of those calls are
held until it answers, and a call that ran without its writes confirmed on the replicas in
time gets ``ReplicasNotConfirmed`` with its reply. The other calls of the batch get their
replies as they come.

At most ``max_batches_in_flight`` batches are on the wire at once, each on a connection of
its own, kept by the pipeline (no pool lock, no timer per command: one deadline per batch);
calls made meanwhile wait for the next batch, which grows instead (up to
``max_batch_calls``). Replies come back in order on each connection, so each batch reads
exactly as many replies as it sent.
"""

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis.replicas import (
    WAITAOF_PROBE,
    ReplicasNotConfirmed,
    ReplicaWait,
    is_unknown_command,
)
from service.redis.types import RedisClient

Arg = str | bytes | int


@runtime_checkable
class ScriptCalls(Protocol):
    """How scripts are called: AutoPipeline, or on a cluster, the router that sends each
    call to the AutoPipeline of its slot's primary (service/redis/cluster.py)."""

    async def call(self, command: Sequence[Arg], *, wait_for_replicas: bool = False) -> Any: ...


class ReplyLost(RedisConnectionError):
    """A call failed after its command began to be written to Redis (a timeout, a dropped
    connection): it may have run, or may still run. To most callers an outage like any
    other (it is a ConnectionError); the money scripts find out what became of the request
    instead (service/redis/money.py)."""


@dataclass(frozen=True, slots=True)
class _Call:
    command: tuple[Arg, ...]
    reply: "asyncio.Future[Any]"
    wait_for_replicas: bool


class AutoPipeline:
    def __init__(
        self,
        new_connection: Callable[[], AbstractConnection],
        *,
        max_batch_calls: int,
        max_batches_in_flight: int,
        timeout_s: float,
        replica_wait: ReplicaWait | None,
    ) -> None:
        assert max_batch_calls >= 1, max_batch_calls
        assert max_batches_in_flight >= 1, max_batches_in_flight
        assert timeout_s > 0, timeout_s
        self._new_connection = new_connection
        self._connections: list[AbstractConnection] = []  # every one made, idle or not
        self._idle: list[AbstractConnection] = []
        self._max_batch_calls = max_batch_calls
        self._max_batches_in_flight = max_batches_in_flight
        self._timeout_s = timeout_s
        self._replica_wait = replica_wait
        # Whether the server has WAITAOF: asked (WAITAOF_PROBE) before the first wait.
        self._has_waitaof: bool | None = None
        self._waiting: list[_Call] = []
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()

    async def call(self, command: Sequence[Arg], *, wait_for_replicas: bool = False) -> Any:
        """Redis's reply to one command; raises its error reply (ResponseError), an outage
        in which it was not sent, or ReplyLost. With ``wait_for_replicas`` and a replica
        wait, a reply that is not an error comes only once the replicas confirmed the
        writes; else ReplicasNotConfirmed, with the reply."""
        loop = asyncio.get_running_loop()
        call = _Call(tuple(command), loop.create_future(), wait_for_replicas)
        self._waiting.append(call)
        self._schedule_flush(loop)
        return await call.reply

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # The flush runs after every callback already queued in this turn of the loop, so
        # the calls those make join the same batch.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and len(self._batches) < self._max_batches_in_flight:
            batch = self._waiting[: self._max_batch_calls]
            del self._waiting[: self._max_batch_calls]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: "asyncio.Task[None]") -> None:
        self._batches.discard(task)
        if self._waiting:
            self._schedule_flush(task.get_loop())

    async def _send(self, batch: list[_Call]) -> None:
        # A caller cancelled while waiting is not sent: it has not run, and no one awaits it.
        calls = [call for call in batch if not call.reply.done()]
        if not calls:
            return
        # Never more connections than batches in flight: _flush starts no more than that.
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = self._new_connection()
            self._connections.append(connection)
        try:
            await self._exchange(connection, calls)
        finally:
            self._idle.append(connection)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Closes every connection of the pipeline, or only the idle ones (as the pools do
        when the primary moved); a later call opens a new one."""
        if not inuse_connections:
            for connection in self._idle:
                # nowait: closed at once, so no batch takes it up while it is closing.
                await connection.disconnect(nowait=True)
            return
        await asyncio.gather(*(c.disconnect() for c in self._connections), return_exceptions=True)

    async def close_when_idle(self) -> None:
        """Closes every connection once no call waits or is in flight: for a pipeline that
        no new call reaches (service/redis/cluster.py, a node that left the primaries)."""
        while self._waiting or self._batches:
            if self._batches:
                await asyncio.wait(set(self._batches))
            else:
                await asyncio.sleep(0)  # the flush already scheduled starts their batch
        await self.disconnect()

    async def _exchange(self, connection: AbstractConnection, calls: list[_Call]) -> None:
        wait = self._replica_wait
        if wait is not None and not any(call.wait_for_replicas for call in calls):
            wait = None
        try:
            # None of the batch's calls has left this process yet: a failure here is an
            # outage in which none of them ran. Under the same deadline as the exchange: the
            # connections have no socket timeout of their own (service/redis/client.py), and
            # a server that stops answering without closing them would hold the handshake
            # or the health check's PING for ever.
            async with asyncio.timeout(self._timeout_s):
                if not connection.is_connected:
                    await connection.connect()  # type: ignore[no-untyped-call]
                await connection.check_health()  # type: ignore[no-untyped-call]
                commands = [call.command for call in calls]
                if wait is not None:
                    commands += wait.commands(await self._waitaof(connection))
            packed = b"".join([pack_command(command) for command in commands])
        except TimeoutError:
            await connection.disconnect()
            _fail(calls, RedisTimeoutError(f"no answer within {self._timeout_s} s; not sent"))
            return
        except Exception as error:
            await connection.disconnect()  # a reply may still come: never read it
            _fail(calls, error)
            return
        answered = 0
        held: list[tuple[_Call, object]] = []  # replies waiting for the replicas' word
        wait_reply: object = None
        try:
            # One deadline for the whole exchange, rather than a timer per reply.
            async with asyncio.timeout(self._timeout_s):
                await connection.send_packed_command(packed, check_health=False)
                for call in calls:
                    reply = await _read_reply(connection)
                    answered += 1
                    if wait is not None and call.wait_for_replicas:
                        held.append((call, reply))
                    else:
                        _settle(call, reply)
                if wait is not None:
                    waits = len(commands) - len(calls)
                    # Only the last one tells, and only once every one was read.
                    wait_reply = [await _read_reply(connection) for _ in range(waits)][-1]
        except Exception as error:
            await connection.disconnect()  # replies may still come: never read them
            for call in calls[answered:]:
                _settle(call, ReplyLost(f"sent in a batch of {len(calls)}, no reply: {error!r}"))
        if wait is not None:
            if isinstance(wait_reply, ResponseError) and is_unknown_command(wait_reply):
                self._has_waitaof = None  # another server now (a failover): ask it again
            confirmed = wait.confirmed(wait_reply)
            for call, reply in held:
                if confirmed or isinstance(reply, ResponseError):
                    _settle(call, reply)
                else:
                    _settle(call, ReplicasNotConfirmed(reply, wait_reply))
        # A connection that found its server demoted (service/redis/sentinel.py).
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()

    async def _waitaof(self, connection: AbstractConnection) -> bool:
        """Whether the server has WAITAOF, asked once (on the connection about to be used),
        within the deadline _exchange puts on everything before a batch is written."""
        if self._has_waitaof is None:
            await connection.send_packed_command(pack_command(WAITAOF_PROBE), check_health=False)
            try:
                await connection.read_response()
            except ResponseError as error:
                if not is_unknown_command(error):  # e.g. a replica: it takes no writes
                    raise RedisConnectionError(f"WAITAOF refused: {error}") from error
                self._has_waitaof = False
            else:
                self._has_waitaof = True
        return self._has_waitaof


async def _read_reply(connection: AbstractConnection) -> object:
    """The next reply; an error reply is returned, not raised: it is one call's answer."""
    try:
        return await connection.read_response(timeout=math.inf)
    except ResponseError as error:
        return error


def _settle(call: _Call, outcome: object) -> None:
    if call.reply.done():  # its caller was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        call.reply.set_exception(outcome)
    else:
        call.reply.set_result(outcome)


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        _settle(call, error)


def pack_command(command: tuple[Arg, ...]) -> bytes:
    """One command in RESP, as redis-py's Connection.pack_command writes it, at a third of
    its cost (it weighs on every money call: docs/performance.md)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if type(arg) is bytes else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def script_calls(redis: RedisClient) -> ScriptCalls:
    """The auto-pipeline of a client opened by connect_redis (service/redis/client.py),
    through which scripts are called: its pool's, or a cluster client's own router. Any
    other client is a programming error: its calls would skip the batching and the
    lost-reply classification that the money scripts rely on."""
    holder = redis.connection_pool if isinstance(redis, Redis) else redis
    calls = getattr(holder, "auto_pipeline", None)
    if not isinstance(calls, ScriptCalls):
        raise TypeError(f"a Redis client not opened by connect_redis: {redis!r}")
    return calls
