"""`wallet serve --embedded` as a person runs it: a real Valkey and a real PostgreSQL from
the wheels, their data in --data-dir. SIGTERM stops everything; a restart on the same
directory keeps every balance and history; a kill -9 under load loses no acknowledged
transaction, leaves no server running, and the next start finds all of it."""

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.support.faults.checks import (
    check_stream_and_balances,
    compare,
    ledger_rows,
    wait_until_in_ledger,
)
from tests.support.faults.load import SESSION_COOKIE, Ack, LoadDriver, Loader, UserSession
from tests.support.faults.procs import Processes, WalletEmbedded
from tests.support.served import service_environ
from tests.support.servers import scratch_dir

# The contract's promise for a warm data directory.
WARM_START_LIMIT_S = 5.0
SERVERS_GONE_LIMIT_S = 15.0
# Cheap hashing, and room for the load driver's sign-ups (ten at once, from one address).
ENV = {
    "WALLET_ARGON2_TIME_COST": "1",
    "WALLET_ARGON2_MEMORY_KIB": "1024",
    "WALLET_SIGN_UP_MAX_PER_ADDRESS": "100000",
    "WALLET_SIGN_UP_HASH_MAX_QUEUED": "64",
}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with scratch_dir("embedded") as directory:
        yield directory


def _env() -> dict[str, str]:
    env = {k: v for k, v in service_environ().items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return env | ENV


async def _servers_gone(embedded: WalletEmbedded) -> None:
    deadline = time.monotonic() + SERVERS_GONE_LIMIT_S
    while embedded.servers():
        assert time.monotonic() < deadline, f"servers still running: {embedded.servers()}"
        await asyncio.sleep(0.05)


async def _get(driver: LoadDriver, user: UserSession, path: str) -> Any:
    headers = {"Cookie": f"{SESSION_COOKIE}={user.cookie}"}
    async with driver.http.get(f"{driver.base_url}{path}", headers=headers) as response:
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


async def _history_ids(driver: LoadDriver, user: UserSession) -> set[int]:
    """Every transaction id in the user's deposit and transfer histories, all pages."""
    ids: set[int] = set()
    for path in ("/api/balance/deposit/", "/api/balance/transfer/"):
        cursor = ""
        while True:
            page = await _get(driver, user, f"{path}?limit=100{cursor}")
            ids |= {item["id"] for item in page["items"]}
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
    return ids


async def _histories(driver: LoadDriver) -> dict[int, set[int]]:
    return {u.id: await _history_ids(driver, u) for u in driver.users}


def _assert_in_both_histories(acks: list[Ack], histories: dict[int, set[int]]) -> None:
    for ack in acks:
        assert ack.txn_id in histories[ack.to_user_id], ack
        if ack.from_user_id is not None:
            assert ack.txn_id in histories[ack.from_user_id], ack


async def _balances(driver: LoadDriver) -> dict[int, int]:
    return {u.id: (await _get(driver, u, "/api/balance/"))["balance_kopecks"] for u in driver.users}


async def test_sigterm_stops_everything_and_a_restart_keeps_every_balance_and_history(
    processes: Processes, data_dir: Path
) -> None:
    embedded = processes.embedded(data_dir, _env())
    async with asyncio.timeout(120):
        await embedded.start()
        async with LoadDriver(embedded.base_url, prefix="em", seed=5) as driver:
            await driver.add_users(4)
            async with Loader(driver, concurrency=4):
                await asyncio.sleep(1.0)
            acks = list(driver.stats.acks.values())
            assert acks
            balances = await _balances(driver)
            histories = await _histories(driver)
            _assert_in_both_histories(acks, histories)
            assert embedded.servers()

            assert embedded.stop(signal.SIGTERM) == 0
            await _servers_gone(embedded)

            warm_start_s = await embedded.start()
            assert warm_start_s < WARM_START_LIMIT_S
            # Sessions live in Valkey's append-only file too: nobody logs in again.
            assert await _balances(driver) == balances
            assert await _histories(driver) == histories
        print(f"{len(acks)} transactions kept across a restart; warm start {warm_start_s} s")


async def test_kill9_under_load_loses_no_acknowledged_transaction(
    processes: Processes, data_dir: Path
) -> None:
    embedded = processes.embedded(data_dir, _env())
    async with asyncio.timeout(180):
        await embedded.start()
        async with LoadDriver(embedded.base_url, prefix="ek", seed=6) as driver:
            await driver.add_users(10)
            async with Loader(driver, concurrency=16):
                await asyncio.sleep(2.0)
                acked_at_kill = len(driver.stats.acks)
                embedded.kill9()
                # Nobody stops the servers: they end by themselves when their parent dies.
                await _servers_gone(embedded)
                restart_s = await embedded.start()
                await asyncio.sleep(2.0)
            stats = driver.stats
            acks = list(stats.acks.values())
            assert acked_at_kill > 0
            assert len(acks) > acked_at_kill, "no 201 after the restart"
            assert not stats.unanswered
            assert not stats.conflicting_replays

            # Every 201 is in the stream once and the balances are the stream's.
            redis = Redis.from_url(embedded.redis_url)
            try:
                user_ids = [u.id for u in driver.users]
                expected = await check_stream_and_balances(redis, acks, user_ids)
            finally:
                await redis.aclose()
            assert await _balances(driver) == expected
            # In both parties' histories, on the next GET.
            _assert_in_both_histories(acks, await _histories(driver))

        # And in the ledger, exactly once.
        await wait_until_in_ledger(embedded.database_url, [a.txn_id for a in acks], 30)
        ledger_verdict = compare(acks, await ledger_rows(embedded.database_url))
        assert ledger_verdict.ok, ledger_verdict.summary()
        assert not ledger_verdict.unacknowledged, ledger_verdict.summary()
        print(
            f"{acked_at_kill} acknowledged before the kill, {len(acks)} in all, every one"
            f" kept; restart took {restart_s} s; failed attempts {dict(stats.failures)}"
        )


async def test_the_embedded_mode_logs_an_access_line_per_request_and_has_its_metrics_apart(
    processes: Processes, data_dir: Path
) -> None:
    embedded = processes.embedded(data_dir, _env())
    async with asyncio.timeout(60):
        await embedded.start()
        async with aiohttp.ClientSession() as http:
            probe = await http.get(f"{embedded.base_url}/healthz", headers={"X-Request-Id": "em-1"})
            assert probe.status == 200
            assert (await http.get(f"{embedded.base_url}/metrics")).status == 404
            metrics_url = f"http://127.0.0.1:{embedded.metrics_port}/metrics"
            assert "wallet_http_requests_total" in await (await http.get(metrics_url)).text()
        assert embedded.stop(signal.SIGTERM) == 0
    # The log holds the servers' output and the ready lines too; the service's are JSON.
    log_lines = embedded.log_path.read_text().splitlines()
    lines = [json.loads(line) for line in log_lines if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "wallet.access"]
    probe, metrics_on_the_api = access
    assert (probe["route"], probe["status"], probe["request_id"]) == ("/healthz", 200, "em-1")
    assert (metrics_on_the_api["route"], metrics_on_the_api["status"]) == ("unmatched", 404)
