"""lua/start_session.lua and lua/end_sessions.lua, called directly against real Redis, and
the money scripts' refusal of a session they ended."""

import json
import time
from typing import cast

import pytest
from redis.exceptions import ResponseError

from service.domain import refusals
from service.redis import keyspace
from service.redis.money import MoneyScripts, SessionCheck
from service.redis.scripts import load_script_source
from service.redis.types import RedisClient
from tests.support.helpers import balance, refusing, snapshot

IDLE_S = 600
ABSOLUTE_S = 3600


def session_key(session_id: str) -> str:
    key = keyspace.session(session_id)
    assert key is not None, session_id
    return key


def session_json(user_id: int) -> str:
    return json.dumps({"created": int(time.time()), "session": {"user_id": user_id}})


async def start(redis: RedisClient, user_id: int, session_id: str, max_sessions: int = 5) -> int:
    keys = [session_key(session_id), keyspace.sessions_of_user(user_id)]
    args: list[str | int] = [
        user_id,
        session_id,
        session_json(user_id),
        IDLE_S,
        ABSOLUTE_S,
        max_sessions,
    ]
    ended: int = await redis.eval(load_script_source("start_session"), 2, *keys, *args)
    return ended


async def end_all(redis: RedisClient, user_id: int) -> int:
    script = load_script_source("end_sessions")
    ended: int = await redis.eval(script, 1, keyspace.sessions_of_user(user_id))
    return ended


async def index(redis: RedisClient, user_id: int) -> list[str]:
    ids = cast(list[bytes], await redis.zrange(keyspace.sessions_of_user(user_id), 0, -1))
    return [i.decode() for i in ids]


async def test_a_session_is_stored_with_the_idle_ttl_and_indexed_until_the_absolute_end(
    redis_client: RedisClient,
) -> None:
    assert await start(redis_client, 1, "0.s1") == 0
    key = session_key("0.s1")
    assert json.loads(cast(bytes, await redis_client.get(key)))["session"] == {"user_id": 1}
    assert IDLE_S - 5 <= await redis_client.ttl(key) <= IDLE_S
    assert await index(redis_client, 1) == ["0.s1"]
    index_key = keyspace.sessions_of_user(1)
    assert ABSOLUTE_S - 5 <= await redis_client.ttl(index_key) <= ABSOLUTE_S
    score = await redis_client.zscore(index_key, "0.s1")
    assert score is not None
    assert abs(score - time.time() * 1_000_000) < 5_000_000  # login time in µs


async def test_entries_of_ended_sessions_leave_the_index_at_the_next_login(
    redis_client: RedisClient,
) -> None:
    for session_id in ("0.s1", "0.s2", "0.s3"):
        await start(redis_client, 1, session_id)
    await redis_client.delete(session_key("0.s2"))  # logged out, or idle
    await start(redis_client, 1, "0.s4")
    assert await index(redis_client, 1) == ["0.s1", "0.s3", "0.s4"]


async def test_at_the_cap_a_login_ends_the_oldest_session(redis_client: RedisClient) -> None:
    # Names in reverse order of login, within one second: the oldest goes by login time.
    for session_id in ("0.s3", "0.s2", "0.s1"):
        assert await start(redis_client, 1, session_id, max_sessions=3) == 0
    assert await start(redis_client, 1, "0.s4", max_sessions=3) == 1
    assert await index(redis_client, 1) == ["0.s2", "0.s1", "0.s4"]
    # Ended, not only forgotten: the index must name every session that exists.
    assert not await redis_client.exists(session_key("0.s3"))
    # An ended session makes room before a live one is ended.
    await redis_client.delete(session_key("0.s1"))
    assert await start(redis_client, 1, "0.s5", max_sessions=3) == 0
    assert await index(redis_client, 1) == ["0.s2", "0.s4", "0.s5"]


async def test_end_sessions_deletes_every_session_of_the_user_and_no_other(
    redis_client: RedisClient,
) -> None:
    for session_id in ("0.a1", "0.a2", "0.a3"):
        await start(redis_client, 1, session_id)
    await start(redis_client, 2, "0.b1")
    await redis_client.delete(session_key("0.a2"))
    assert await end_all(redis_client, 1) == 2
    for session_id in ("0.a1", "0.a2", "0.a3"):
        assert not await redis_client.exists(session_key(session_id))
    assert not await redis_client.exists(keyspace.sessions_of_user(1))
    assert await redis_client.exists(session_key("0.b1"))
    assert await index(redis_client, 2) == ["0.b1"]
    assert await end_all(redis_client, 1) == 0  # nothing left: a no-op


GOOD_KEYS = [session_key("0.s"), keyspace.sessions_of_user(1)]
GOOD_ARGS = ["1", "0.s", "{}", "60", "60", "5"]


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        ([session_key("0.s"), keyspace.sessions_of_user(2)], GOOD_ARGS),
        ([session_key("0.t"), keyspace.sessions_of_user(1)], GOOD_ARGS),
        (["other_s", keyspace.sessions_of_user(1)], GOOD_ARGS),
        (["wallet_session:{b0}:s:x", keyspace.sessions_of_user(1)], ["1", "0.s:x", *GOOD_ARGS[2:]]),
        (["wallet_session:{b1}:s", keyspace.sessions_of_user(1)], ["1", "1.s", *GOOD_ARGS[2:]]),
        ([session_key("0.s"), "sessions:{b0}:01"], ["01", *GOOD_ARGS[1:]]),
        (GOOD_KEYS, [*GOOD_ARGS[:3], "0", "60", "5"]),
        (GOOD_KEYS, [*GOOD_ARGS[:5], "0"]),
        (GOOD_KEYS, [*GOOD_ARGS[:5], "1001"]),
        (GOOD_KEYS, GOOD_ARGS[:5]),
        (GOOD_KEYS[:1], GOOD_ARGS),
    ],
)
async def test_start_session_refuses_malformed_arguments_and_writes_nothing(
    redis_client: RedisClient, keys: list[str], args: list[str]
) -> None:
    await start(redis_client, 1, "0.live")
    before = await snapshot(redis_client)
    with pytest.raises(ResponseError, match="start_session: invalid arguments"):
        await redis_client.eval(load_script_source("start_session"), len(keys), *keys, *args)
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize(
    "keys",
    [
        [],
        ["sessions:{b0}:0"],
        ["sessions:1"],
        ["sessions:{1}"],
        ["user:{b0}:1"],
        ["sessions:{b0}:1", "sessions:{b0}:2"],
    ],
)
async def test_end_sessions_refuses_any_other_key_and_writes_nothing(
    redis_client: RedisClient, keys: list[str]
) -> None:
    await start(redis_client, 1, "0.live")
    before = await snapshot(redis_client)
    with pytest.raises(ResponseError, match="end_sessions:"):
        await redis_client.eval(load_script_source("end_sessions"), len(keys), *keys)
    assert await snapshot(redis_client) == before


async def test_no_money_moves_with_a_session_ended_by_end_sessions(
    redis_client: RedisClient, money: MoneyScripts
) -> None:
    await money.register_user(1)
    await money.register_user(2)
    await money.deposit(1, 1_000)
    await start(redis_client, 1, "0.s1")
    session = SessionCheck(session_key("0.s1"), ABSOLUTE_S, IDLE_S)
    await money.deposit(1, 1, "k", session=session)
    await end_all(redis_client, 1)
    before = await snapshot(redis_client)
    with refusing(refusals.SESSION_ENDED):
        await money.deposit(1, 1, session=session)
    with refusing(refusals.SESSION_ENDED):
        await money.transfer(1, 2, 1, session=session)
    with refusing(refusals.SESSION_ENDED):  # not even a replay of an earlier answer
        await money.deposit(1, 1, "k", session=session)
    assert await snapshot(redis_client) == before
    assert await balance(redis_client, 2) == 0
