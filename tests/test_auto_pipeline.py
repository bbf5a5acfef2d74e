"""The auto-pipeline (service/redis/pipelining.py) against a real Redis: concurrent calls
share round trips, and each keeps the outcome it would have had alone."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Connection, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.outages import is_outage
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.pipelining import Arg, AutoPipeline, ReplyLost, pack_command, script_calls
from service.redis.pools import PipeliningPool
from service.redis.scripts import LuaScript, load_script_source
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.lost_replies import through_a_proxy


@pytest.fixture
async def one_batch_at_a_time(
    redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AutoPipeline, list[int]]]:
    """A pipeline that sends one batch at a time, and the size of each write it made (one
    per batch)."""
    writes: list[int] = []
    connections: list[AbstractConnection] = []

    def counting_connection() -> AbstractConnection:
        assert isinstance(redis_client, Redis)
        assert isinstance(redis_client.connection_pool, PipeliningPool)
        connection = redis_client.connection_pool.new_pipeline_connection()
        send = connection.send_packed_command

        async def counted(command: Any, check_health: bool = True) -> None:
            if isinstance(command, bytes):  # a batch (the handshake writes lists of parts)
                writes.append(len(command))
            await send(command, check_health)

        monkeypatch.setattr(connection, "send_packed_command", counted)
        connections.append(connection)
        return connection

    pipeline = AutoPipeline(
        counting_connection,
        max_batch_calls=128,
        max_batches_in_flight=1,
        timeout_s=5,
        replica_wait=None,
    )
    try:
        yield pipeline, writes
    finally:
        await pipeline.disconnect()
    assert len(connections) == 1


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(
    one_batch_at_a_time: tuple[AutoPipeline, list[int]],
) -> None:
    calls, writes = one_batch_at_a_time
    replies = await asyncio.gather(*(calls.call(("INCR", "counted")) for _ in range(300)))
    # Sent in the order called, each reply to its own call.
    assert replies == list(range(1, 301))
    # 128 + 128 + 44 calls: the calls made while a batch was on the wire waited for the next.
    one = len(pack_command(("INCR", "counted")))
    assert writes == [128 * one, 128 * one, 44 * one]


async def test_a_pipeline_closing_when_idle_lets_its_calls_in_flight_have_their_replies(
    redis_client: RedisClient,
) -> None:
    """A retired pipeline (of a cluster node that left the primaries, service/redis/
    cluster.py) closes its connections only once its calls have their replies."""
    assert isinstance(redis_client, Redis)
    assert isinstance(redis_client.connection_pool, PipeliningPool)
    pool = redis_client.connection_pool
    made: list[AbstractConnection] = []

    def new_connection() -> AbstractConnection:
        made.append(pool.new_pipeline_connection())
        return made[-1]

    pipeline = AutoPipeline(
        new_connection, max_batch_calls=8, max_batches_in_flight=2, timeout_s=5, replica_wait=None
    )
    blocked = asyncio.create_task(pipeline.call(("BLPOP", "closing-when-idle", "0.3")))
    await asyncio.sleep(0.05)  # sent: the server holds it until its timeout
    closing = asyncio.create_task(pipeline.close_when_idle())
    await asyncio.sleep(0.1)
    assert not closing.done()
    assert [connection.is_connected for connection in made] == [True]
    assert await blocked is None  # its own reply: BLPOP's timeout
    await asyncio.wait_for(closing, 5)
    assert [connection.is_connected for connection in made] == [False]


async def test_an_error_reply_goes_to_its_call_alone(redis_client: RedisClient) -> None:
    calls = script_calls(redis_client)
    await redis_client.set("a-string", "x")
    replies = await asyncio.gather(
        calls.call(("INCR", "n")),
        calls.call(("HGET", "a-string", "field")),  # WRONGTYPE
        calls.call(("INCR", "n")),
        return_exceptions=True,
    )
    assert replies[0] == 1
    assert isinstance(replies[1], ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2] == 2


async def test_a_script_flushed_away_is_loaded_again_for_every_call_that_found_it_gone(
    redis_client: RedisClient,
) -> None:
    register = LuaScript(redis_client, "register_user")
    await register.load()
    await redis_client.script_flush()  # as a Redis restart between the load and the calls
    replies = await asyncio.gather(
        *(register(keys=[keyspace.user(n)], args=[str(n)]) for n in range(1, 21))
    )
    assert replies == [[b"created"]] * 20


async def test_a_caller_cancelled_before_the_batch_left_is_not_sent(
    redis_client: RedisClient,
) -> None:
    calls = script_calls(redis_client)
    waiting = asyncio.create_task(calls.call(("INCR", "never")))
    await asyncio.sleep(0)  # the call is queued and the flush scheduled, not yet run
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await calls.call(("INCR", "sent")) == 1  # a later batch went out
    assert await redis_client.get("never") is None


async def test_replies_lost_on_the_wire_leave_every_call_of_the_batch_unknown(
    redis_url: str, settings: Settings, redis_client: RedisClient
) -> None:
    register = LuaScript(redis_client, "register_user")
    await register.load()
    async with through_a_proxy(settings, redis_url) as (proxy, through):
        client = connect_redis(through)
        try:
            calls = script_calls(client)
            assert await calls.call(("PING",)) == b"PONG"  # a connection is open
            # The proxy sees the batch's EVALSHA and from then on drops what Redis answers on
            # that connection: the replies of the whole batch.
            proxy.drop_next = True
            command = ("EVALSHA", _sha("register_user"), 1, keyspace.user(7), "7")
            replies = await asyncio.gather(
                calls.call(("INCR", "before")),
                calls.call(command),
                calls.call(("INCR", "after")),
                return_exceptions=True,
            )
        finally:
            await client.aclose()
    assert all(isinstance(reply, ReplyLost) for reply in replies), replies
    # Each of them ran all the same: that is why their outcome is "unknown", not "failed".
    assert await redis_client.get("before") == b"1"
    assert await redis_client.exists(keyspace.user(7))
    assert await redis_client.get("after") == b"1"


async def test_a_failure_before_sending_is_raised_to_every_call_as_the_outage_it_is() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    free_port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()  # nothing listens there now: the connection is refused
    refused = connect_redis(Settings(redis_url=f"redis://127.0.0.1:{free_port}/0"))
    try:
        calls = script_calls(refused)
        replies = await asyncio.gather(
            calls.call(("INCR", "n")), calls.call(("INCR", "n")), return_exceptions=True
        )
    finally:
        await refused.aclose()
    for reply in replies:
        assert isinstance(reply, RedisConnectionError)
        assert not isinstance(reply, ReplyLost)


async def test_a_server_that_never_answers_is_an_outage_within_the_timeout() -> None:
    """It accepts the connection and reads, and answers nothing: not even the handshake. The
    calls were not sent, so they are an outage (503, nothing ran), not ReplyLost."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    silent_redis = connect_redis(
        Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_socket_timeout_ms=300)
    )
    try:
        calls = script_calls(silent_redis)
        async with asyncio.timeout(5):  # without a deadline of its own it waits for ever
            replies = await asyncio.gather(
                calls.call(("INCR", "n")), calls.call(("INCR", "n")), return_exceptions=True
            )
    finally:
        await silent_redis.aclose()
        listener.close()
        await listener.wait_closed()
    for reply in replies:
        assert is_outage(reply), reply
        assert not isinstance(reply, ReplyLost), reply


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 2, "user:{1}", "idem:{1}:k", "1", "", "86400"),
        ("SET", "k", b"\x00\xff bytes", 0, -12),
        ("HSET", "h", "name", "Алиса"),  # not ASCII: lengths in bytes
    ],
)
def test_commands_are_written_as_redis_py_writes_them(command: tuple[Arg, ...]) -> None:
    assert pack_command(command) == b"".join(Connection().pack_command(*command))


async def test_a_client_not_opened_by_connect_redis_is_refused() -> None:
    other = Redis()
    with pytest.raises(TypeError, match="connect_redis"):
        script_calls(other)
    await other.aclose()


def _sha(name: str) -> str:
    return hashlib.sha1(load_script_source(name).encode()).hexdigest()


async def test_scripts_lost_again_between_the_load_and_the_call_are_loaded_again(
    redis_client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    register = LuaScript(redis_client, "register_user")
    real_load = register.load
    flushes = 0

    async def load_and_lose_it_again() -> None:
        # A SCRIPT FLUSH (or a restart) right after each of the first two loads.
        nonlocal flushes
        await real_load()
        if flushes < 2:
            flushes += 1
            await redis_client.script_flush()

    monkeypatch.setattr(register, "load", load_and_lose_it_again)
    await redis_client.script_flush()
    assert await register(keys=[keyspace.user(1)], args=["1"]) == [b"created"]
    assert flushes == 2
