"""`wallet writer` as an operator runs it: its own listener (WALLET_WRITER_METRICS_LISTEN)
with GET /metrics (what the writer did) and GET /healthz, which docker-compose.yml's
healthcheck asks, and how it refuses to start."""

import socket
import subprocess
import time

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.ledger_insert import insert_isolating
from service.ledger.writer import parse_entry
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from tests.support.container_files import compose_healthcheck, run_healthcheck
from tests.support.faults.procs import Processes, wallet_env, wallet_executable
from tests.support.helpers import stream_entries
from tests.support.scrape import Page, scrape_until
from tests.support.writer import create_users, dead_letters, ledger_count, some_transactions, xadd


async def test_the_writer_serves_what_it_did_on_its_own_listener(
    processes: Processes,
    redis_url: str,
    database_url: str,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    money: MoneyScripts,
) -> None:
    users = await create_users(db_engine, money, 3)
    await some_transactions(money, users, 5)
    # Two entries stored already (a writer died before XACK): their rows are skipped.
    first_two = [(i.decode(), parse_entry(f)) for i, f in (await stream_entries(redis_client))[:2]]
    assert await insert_isolating(db_engine, first_two) == (2, [])
    await xadd(redis_client, {"kind": "nonsense"})
    started_s = time.time()

    writer = processes.writer(wallet_env(redis_url, database_url))
    writer.start()

    def all_handled(page: Page) -> bool:
        return (
            page.value("wallet_writer_entries_persisted_total"),
            page.value("wallet_writer_dead_letters_total"),
        ) == (5, 1)

    page = await scrape_until(writer.metrics_url, all_handled)
    assert await ledger_count(db_engine) == (5, 5)
    assert len(await dead_letters(redis_client)) == 1
    assert page.value("wallet_writer_rows_inserted_total") == 3
    assert page.value("wallet_writer_rows_skipped_total") == 2
    assert page.value("wallet_writer_retries_total") == 0
    batches = page.value("wallet_writer_batches_total")
    assert batches >= 1
    last_batch_s = page.value("wallet_writer_last_batch_timestamp_seconds")
    assert started_s <= last_batch_s <= time.time()
    assert 0 < page.value("wallet_writer_last_batch_lag_seconds") < 60
    # Idle, it still reads the stream every WALLET_WRITER_BLOCK_MS (1 s): the heartbeat moves.
    later = await scrape_until(
        writer.metrics_url,
        lambda p: p.value("wallet_writer_last_read_timestamp_seconds") > last_batch_s + 1,
        limit_s=10,
    )
    assert later.value("wallet_writer_batches_total") == batches
    assert later.value("process_resident_memory_bytes") > 0

    async with aiohttp.ClientSession() as http, http.get(f"{writer.metrics_url}/healthz") as got:
        assert (got.status, await got.json()) == (200, {"status": "ok"})
    # docker-compose.yml's healthcheck of the writer, run here: healthy, then not.
    healthcheck = compose_healthcheck("writer")
    assert run_healthcheck(healthcheck, writer.metrics_port) == 0
    writer.stop()
    assert run_healthcheck(healthcheck, writer.metrics_port) != 0


def test_the_writer_on_a_taken_metrics_address_says_so_in_one_line(
    redis_url: str, database_url: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = wallet_env(redis_url, database_url) | {"WALLET_WRITER_METRICS_LISTEN": address}
        result = subprocess.run(
            [wallet_executable(), "writer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == [f"Error: WALLET_WRITER_METRICS_LISTEN {address}: Address already in use"]
