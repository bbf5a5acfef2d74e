"""Replies lost between Redis and the API, under load by careless clients: every request is
sent once, without an Idempotency-Key. A request whose script may have run must never be
answered as refused or as "retry later": the API finds out what became of it, or answers
503 outcome_unknown (no Retry-After). The stream, the truth about what was applied, is
compared with every answer.

- Redis paused (SIGSTOP) for longer than the API's socket timeout, then resumed: the
  scripts sent meanwhile run when it resumes, after the API gave up waiting for them.
- Redis killed (SIGKILL) while replies are on their way (a proxy holds them back 50 ms and
  drops them with the kill), restarted on its append-only file a second later.
"""

import asyncio
import time

from redis.asyncio import Redis

from tests.support.faults.checks import (
    compare_answers,
    redis_balances,
    replay,
    stream_transactions,
)
from tests.support.faults.load import Answer, LoadDriver, Loader
from tests.support.faults.procs import DelayProxy, Processes, RedisServer, wallet_env

PAUSE_S = 5.0
DOWN_S = 1.0
# Well under the pause: the scripts in flight when Redis stops lose their replies.
SOCKET_TIMEOUT_MS = 1_000
FUNDS_KOPECKS = 10**9


async def _check_against_the_stream(
    redis_url: str, driver: LoadDriver, answers: list[Answer]
) -> str:
    redis = Redis.from_url(redis_url)
    try:
        txns = await stream_transactions(redis)
        verdict = compare_answers(answers, txns)
        assert verdict.ok, verdict.summary()
        # And the balances are what the stream gives: nothing applied twice or half.
        applied = replay(txns)
        assert not applied.inconsistent, applied.inconsistent[:10]
        user_ids = [u.id for u in driver.users]
        assert await redis_balances(redis, user_ids) == {u: applied.balances[u] for u in user_ids}
    finally:
        await redis.aclose()
    return verdict.summary()


def _by_answer(answers: list[Answer]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in answers:
        what = f"{answer.status} {answer.code or ''}{' Retry-After' if answer.retry_after else ''}"
        counts[what.strip()] = counts.get(what.strip(), 0) + 1
    return counts


async def test_redis_paused_no_applied_request_is_answered_as_refused_or_retryable(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    env = wallet_env(own_redis.url, database_url, redis_socket_timeout_ms=str(SOCKET_TIMEOUT_MS))
    async with asyncio.timeout(120):
        serve = processes.serve(env)
        await serve.start()
        async with LoadDriver(serve.base_url, prefix="lp", seed=8, request_timeout_s=60) as driver:
            await driver.add_users(10)
            await driver.fund(FUNDS_KOPECKS)
            async with Loader(driver, concurrency=16, unkeyed=True):
                await asyncio.sleep(1.0)
                own_redis.pause()
                paused_at = time.monotonic()
                await asyncio.sleep(PAUSE_S)
                own_redis.resume()
                await asyncio.sleep(2.0)
            answers = driver.stats.answers
            # Requests did wait through the pause (else this test proves nothing).
            assert any(a.latency_s > SOCKET_TIMEOUT_MS / 1000 for a in answers), answers[-5:]
            summary = await _check_against_the_stream(own_redis.url, driver, answers)
        print(f"paused {PAUSE_S} s at {paused_at:.1f}; {summary}; answers {_by_answer(answers)}")


async def test_redis_killed_mid_request_no_applied_request_is_answered_as_refused_or_retryable(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    async with asyncio.timeout(120), DelayProxy(own_redis.port, 0.05) as proxy:
        env = wallet_env(proxy.url(), database_url, redis_socket_timeout_ms=str(SOCKET_TIMEOUT_MS))
        serve = processes.serve(env)
        await serve.start()
        async with LoadDriver(serve.base_url, prefix="lk", seed=9, request_timeout_s=60) as driver:
            await driver.add_users(10)
            await driver.fund(FUNDS_KOPECKS)
            async with Loader(driver, concurrency=16, unkeyed=True):
                await asyncio.sleep(1.5)
                own_redis.kill9()
                proxy.drop_connections()  # the replies on their way die with it
                await asyncio.sleep(DOWN_S)
                own_redis.start()
                await own_redis.wait_ready()
                await asyncio.sleep(2.0)
            answers = driver.stats.answers
            summary = await _check_against_the_stream(own_redis.url, driver, answers)
        print(f"killed for {DOWN_S} s; {summary}; answers {_by_answer(answers)}")
