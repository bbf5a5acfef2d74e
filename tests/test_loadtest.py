"""``wallet loadtest`` against the app served in this process, with a writer running."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli.main import main
from service.http.app import create_app
from service.ledger.writer import StreamWriter
from service.loadtest.run import LoadtestConfig, parse_mix, run_loadtest
from service.loadtest.stats import Histogram, IdSet
from service.settings import Settings


@pytest.fixture
async def service_url(
    aiohttp_server: AiohttpServer,
    app_settings: Settings,
    redis_client: Redis,
    db_engine: AsyncEngine,
) -> AsyncIterator[str]:
    """The service on a local port, and a writer draining the stream into the ledger."""
    server = await aiohttp_server(create_app(app_settings))
    settings = app_settings.model_copy(update={"writer_block_ms": 100})
    stop = asyncio.Event()
    writer = asyncio.create_task(StreamWriter(settings, redis_client, db_engine).run(stop))
    yield str(server.make_url("/"))
    stop.set()
    await writer


async def test_a_short_run_passes_every_check_and_reports_its_figures(
    service_url: str, app_settings: Settings
) -> None:
    config = LoadtestConfig(
        url=service_url,
        users=20,
        concurrency=32,
        duration_s=3,
        idempotency_keys=True,
        redis_url=app_settings.redis_url,
        database_url=app_settings.database_url,
        progress=False,
        seed=7,
    )
    result = await run_loadtest(config)
    assert result.violations == []
    assert result.ok
    figures = result.figures
    assert figures["operations"] > 100
    assert figures["throughput_rps"] > 0
    for op in ("deposit", "transfer", "balance"):
        row = figures["latency"][op]
        assert row["count"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    # Some transfers are refused, and the refusals are counted by code.
    refused = [e for e in figures["errors"] if e["code"] == "insufficient_funds"]
    assert refused
    assert {e["status"] for e in refused} == {409}
    replays = figures["idempotency_replays"]
    assert replays["sent"] > 0
    assert replays["identical"] == replays["sent"]
    balances = figures["balances"]
    assert balances["users"] == 20
    assert balances["sum_balances_kopecks"] == balances["sum_acknowledged_deposits_kopecks"]
    assert balances["balances_not_as_acknowledged"] == 0
    ledger = figures["ledger"]
    assert ledger["reconcile_ok"]
    assert ledger["writer_caught_up"]
    # Funding deposits included, each acknowledged transaction is one row.
    assert ledger["ledger_rows"] == ledger["acknowledged_transactions"] > 20
    assert ledger["missing"] == ledger["unacknowledged_rows"] == ledger["users_differing"] == 0
    assert ledger["duplicated_ids"] == 0


async def _invoke_in_a_thread(args: list[str]) -> Result:
    """The command line runs its own event loop; this test's loop keeps serving."""
    return await asyncio.to_thread(CliRunner().invoke, main, args)


async def test_a_balance_moved_behind_the_services_back_fails_the_run(
    service_url: str, app_settings: Settings, redis_client: Redis, tmp_path: Path
) -> None:
    figures_file = tmp_path / "figures.json"
    args = ["loadtest", "--url", service_url, "--users", "5", "--concurrency", "8"]
    args += ["--duration", "2", "--idempotency-keys", "--json", str(figures_file)]
    args += ["--redis-url", app_settings.redis_url]
    args += ["--database-url", app_settings.database_url]
    run = asyncio.create_task(_invoke_in_a_thread(args))
    wallets: list[bytes] = []
    while len(wallets) < 5 and not run.done():
        await asyncio.sleep(0.05)
        wallets = [key async for key in redis_client.scan_iter(match="user:{*}")]
    await asyncio.sleep(0.5)  # the users are being funded, then the load starts
    await redis_client.hincrby(wallets[0], "balance_kopecks", 1)
    result = await run

    assert result.exit_code == 1, result.output
    assert "VIOLATION" in result.output
    figures = orjson.loads(figures_file.read_bytes())
    assert figures["ok"] is False
    balances = figures["balances"]
    assert balances["balances_not_as_acknowledged"] == 1
    assert balances["sum_balances_kopecks"] == balances["sum_acknowledged_deposits_kopecks"] + 1
    assert figures["ledger"]["reconcile_ok"] is False
    assert figures["ledger"]["missing"] == 0
    assert any("reconcile" in v for v in figures["violations"])


def test_an_unreachable_service_exits_2() -> None:
    args = ["loadtest", "--url", "http://127.0.0.1:9", "--users", "2"]
    args += ["--concurrency", "1", "--duration", "1", "--timeout", "2"]
    result = CliRunner().invoke(main, args, env={"REDIS_URL": "", "DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "cannot reach the service" in result.output


def test_the_mix_names_known_operations_with_integer_weights() -> None:
    assert parse_mix("transfer=1") == {"deposit": 0, "transfer": 1, "balance": 0}
    assert parse_mix(" deposit=20, transfer=70,balance=10 ") == {
        "deposit": 20,
        "transfer": 70,
        "balance": 10,
    }
    for bad in ("withdraw=5", "deposit=1.5", "deposit", "deposit=0,transfer=0"):
        with pytest.raises(ValueError, match=r"expected|add up"):
            parse_mix(bad)


def test_the_histogram_gives_percentiles_within_half_a_percent() -> None:
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.add(ms / 10)
    assert histogram.count == 1000
    assert histogram.max_ms == 100.0
    for p, exact in ((50, 50.0), (90, 90.0), (99, 99.0), (100, 100.0)):
        assert exact <= histogram.percentile(p) <= exact * 1.005


def test_the_id_set_holds_each_id_once_in_any_order() -> None:
    ids = IdSet()
    added = [ids.add(i) for i in (500_000, 10, 500_000, 999_999, 10)]
    assert added == [True, True, False, True, False]
    assert len(ids) == 3
    assert list(ids) == [10, 500_000, 999_999]
    assert (ids.min, ids.max) == (10, 999_999)
    assert 11 not in ids
    assert 10 in ids
    assert 5_000_000 not in ids
