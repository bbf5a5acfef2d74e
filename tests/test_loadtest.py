"""``wallet loadtest`` against the app served in this process, with a writer running."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from pytest_aiohttp import AiohttpServer
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli.main import main
from service.http.app import create_app
from service.ledger.writer import StreamWriter
from service.loadtest.checks import unacknowledged_ends
from service.loadtest.known import KnownHold, held_bounds
from service.loadtest.run import DEFAULT_MIX, LoadtestConfig, parse_mix, run_loadtest
from service.loadtest.stats import Histogram, IdSet
from service.redis import keyspace
from service.redis.types import RedisClient
from service.settings import Settings


@pytest.fixture
def buckets() -> int:
    return 1


@pytest.fixture
async def service_url(
    aiohttp_server: AiohttpServer,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    buckets: int,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[str]:
    """The service on a local port with ``buckets`` buckets, and a writer per bucket
    draining its stream into the ledger."""
    monkeypatch.setattr(keyspace, "BUCKETS", keyspace.BUCKETS)  # put back after the test
    monkeypatch.setenv("WALLET_BUCKETS", str(buckets))  # the loadtest's checks read it
    settings = app_settings.model_copy(update={"buckets": buckets, "writer_block_ms": 100})
    server = await aiohttp_server(create_app(settings))
    stop = asyncio.Event()
    writers = [
        asyncio.create_task(StreamWriter(settings, redis_client, db_engine, bucket).run(stop))
        for bucket in keyspace.all_buckets()
    ]
    yield str(server.make_url("/"))
    stop.set()
    await asyncio.gather(*writers)


# Three buckets: most operations cross them (a transfer's saga, a hold's expectation).
@pytest.mark.parametrize("buckets", [1, 3])
async def test_a_short_run_of_the_whole_mix_passes_every_check_and_reports_its_figures(
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
    assert set(config.mix) == {
        "deposit", "transfer", "balance", "hold", "capture", "void", "batch", "refund"
    }  # fmt: skip
    assert max(config.mix, key=config.mix.__getitem__) == "transfer"
    result = await run_loadtest(config)
    assert result.violations == []
    assert result.ok
    figures = result.figures
    assert figures["operations"] > 100
    assert figures["throughput_rps"] > 0
    for op in config.mix:
        row = figures["latency"][op]
        assert row["count"] > 0, op
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    # Some transfers, holds and batches are refused for want of money, and some refunds
    # for asking more than is left; the refusals are counted by code.
    codes = {(e["operation"], e["status"], e["code"]) for e in figures["errors"]}
    assert ("transfer", 409, "insufficient_funds") in codes
    assert ("hold", 409, "insufficient_funds") in codes
    assert ("batch", 409, "insufficient_funds") in codes
    assert ("refund", 422, "refund_exceeds_transfer") in codes
    replays = figures["idempotency_replays"]
    assert replays["sent"] > 0
    assert replays["identical"] == replays["sent"]
    done = figures["holds_batches_refunds"]
    for name in ("holds", "captured", "voided", "batches", "refunds"):
        assert done[name] > 0, name
    assert done["batch_legs"] >= done["batches"]
    assert done["holds"] >= done["captured"] + done["voided"] + done["pending_known"]
    balances = figures["balances"]
    assert balances["users"] == 20
    assert balances["sum_balances_kopecks"] == balances["sum_acknowledged_deposits_kopecks"]
    assert balances["balances_not_as_acknowledged"] == 0
    assert balances["held_not_as_acknowledged"] == 0
    assert balances["held_or_available_inconsistent"] == 0
    assert balances["sum_held_kopecks"] == done["pending_known_kopecks"] > 0
    ledger = figures["ledger"]
    assert ledger["reconcile_ok"]
    assert ledger["writer_caught_up"]
    # Funding deposits included, each acknowledged transaction is one row; each hold too.
    assert ledger["ledger_rows"] == ledger["acknowledged_transactions"] > 20
    assert ledger["missing"] == ledger["unacknowledged_rows"] == ledger["users_differing"] == 0
    assert ledger["duplicated_ids"] == ledger["kind_hold_or_refund_differing"] == 0
    assert ledger["reservation_and_credit_differing"] == 0
    assert ledger["refunds_over_transfer"] == ledger["refunds_of_no_transfer_received"] == 0
    assert ledger["hold_rows"] == done["holds"]
    assert ledger["holds_missing"] == ledger["unacknowledged_holds"] == 0
    assert ledger["payers_holds_differing"] == 0
    assert ledger["hold_events"] == done["captured"] + done["voided"]
    assert ledger["hold_events_missing"] == ledger["hold_events_unacknowledged"] == 0


async def _invoke_in_a_thread(args: list[str]) -> Result:
    """The command line runs its own event loop; this test's loop keeps serving."""
    return await asyncio.to_thread(CliRunner().invoke, main, args)


async def test_a_balance_moved_behind_the_services_back_fails_the_run(
    service_url: str, app_settings: Settings, redis_client: RedisClient, tmp_path: Path
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
        wallets = [key async for key in redis_client.scan_iter(match="user:{b*}:*")]
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


async def test_held_money_moved_behind_the_services_back_fails_the_run(
    service_url: str, app_settings: Settings, redis_client: RedisClient
) -> None:
    config = LoadtestConfig(
        url=service_url,
        users=5,
        concurrency=8,
        duration_s=2,
        idempotency_keys=True,
        redis_url=app_settings.redis_url,
        database_url=app_settings.database_url,
        progress=False,
        seed=11,
    )
    run = asyncio.create_task(run_loadtest(config))
    holds: list[bytes] = []
    while not holds and not run.done():
        await asyncio.sleep(0.05)
        holds = [key async for key in redis_client.scan_iter(match="hold:*")]
    payer = await redis_client.hget(holds[0], "from")
    assert payer is not None
    # One kopeck more held than the payer's holds: the posted balance is untouched.
    await redis_client.hincrby(keyspace.user(int(payer)), "held_kopecks", 1)
    result = await run

    assert not result.ok
    balances = result.figures["balances"]
    assert balances["held_not_as_acknowledged"] == 1
    assert balances["balances_not_as_acknowledged"] == 0
    assert balances["sum_balances_kopecks"] == balances["sum_acknowledged_deposits_kopecks"]
    assert not result.figures["ledger"]["reconcile_ok"]  # reconcile finds it too
    assert [v for v in result.violations if "held" in v] == result.violations
    assert f"user {int(payer)}: the holds known pending say" in result.violations[0]


def test_an_unreachable_service_exits_2() -> None:
    args = ["loadtest", "--url", "http://127.0.0.1:9", "--users", "2"]
    args += ["--concurrency", "1", "--duration", "1", "--timeout", "2"]
    result = CliRunner().invoke(main, args, env={"REDIS_URL": "", "DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "cannot reach the service" in result.output


def test_the_mix_names_known_operations_with_integer_weights() -> None:
    assert parse_mix("transfer=1") == dict.fromkeys(DEFAULT_MIX, 0) | {"transfer": 1}
    assert parse_mix(" deposit=20, transfer=70,balance=10 , refund=3") == {
        "deposit": 20,
        "transfer": 70,
        "balance": 10,
        "hold": 0,
        "capture": 0,
        "void": 0,
        "batch": 0,
        "refund": 3,
    }
    for bad in ("withdraw=5", "deposit=1.5", "deposit", "deposit=0,transfer=0", "hold=-1"):
        with pytest.raises(ValueError, match=r"expected|add up"):
            parse_mix(bad)


def test_the_command_lines_default_mix_is_the_default_mix() -> None:
    option = next(p for p in main.commands["loadtest"].params if p.name == "mix")
    assert isinstance(option.default, str)
    assert parse_mix(option.default) == DEFAULT_MIX


def test_held_money_is_bounded_by_the_holds_that_may_have_expired_meanwhile() -> None:
    def hold(hold_id: int, payer: int, amount: int, expiry: float) -> KnownHold:
        return KnownHold(hold_id, payer, 99, amount, expiry - 0.1, expiry)

    pending = [
        hold(1, 1, 100, expiry=1000.0),  # surely pending while reading at 10..20
        hold(2, 1, 20, expiry=15.0),  # expires during the reads: either way
        hold(3, 1, 7, expiry=5.0),  # surely expired before
        hold(4, 2, 50, expiry=1000.0),
    ]
    ended = hold(5, 2, 1, expiry=1000.0)
    ended.open = False
    doubtful = [hold(6, 3, 30, expiry=1000.0)]  # its capture got no answer
    bounds = held_bounds([*pending, ended], doubtful, sent=10.0, answered=20.0)
    assert bounds == {1: (100, 120), 2: (50, 50), 3: (0, 30)}


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


def test_a_hold_may_end_expired_only_if_the_tool_could_have_seen_it_expire() -> None:
    # 1 and 5 the tool saw past their expiry or had pending near it; 2 and 3 it captured
    # and voided; 4 it knew surely pending; 6 may have expired, but was captured behind
    # its back (no capture of it was answered).
    events: dict[int, tuple[str, int | None]] = {
        1: ("expired", None),
        2: ("captured", 10),
        3: ("voided", None),
        4: ("expired", None),
        5: ("expired", None),
        6: ("captured", 11),
    }
    wrong = unacknowledged_ends(events, acknowledged={2, 3}, may_expire={1, 5, 6})
    assert wrong == ["hold 4: expired", "hold 6: captured"]
