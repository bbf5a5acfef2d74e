"""``wallet loadtest``: drive a running service at high concurrency, then verify the money.

``run_loadtest`` sets up the users and drives the mix (service/loadtest/driver.py and
operations.py) with a live progress bar on stderr, then runs the checks
(service/loadtest/checks.py) and returns every figure with the violations found.
``format_result`` is the printed report.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from service.loadtest.checks import check_balances, check_ledger, hold_figures
from service.loadtest.driver import (
    DEFAULT_MIX,
    OPERATIONS,
    Driver,
    LoadtestAborted,
    LoadtestConfig,
    Recorder,
    client_session,
)
from service.settings import Settings

__all__ = ["DEFAULT_MIX", "LoadtestAborted", "LoadtestConfig", "format_result", "run_loadtest"]

T = TypeVar("T")
PERCENTILES = (50, 90, 99)
# Answers the tool's valid requests may legitimately get (whether a hold_not_pending or a
# refund_exceeds_transfer was right, the operations check: service/loadtest/operations.py).
EXPECTED = {
    200,
    201,
    (409, "insufficient_funds"),
    (409, "hold_not_pending"),
    (409, "too_many_holds"),
    (422, "refund_exceeds_transfer"),
}
SETUP_OPERATIONS = {"healthz", "sign-up", "login"}


@dataclass
class LoadtestResult:
    figures: dict[str, Any]
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def parse_mix(text: str) -> dict[str, int]:
    """``"deposit=20,transfer=70,hold=5"`` -> weights (unnamed ones 0); ValueError."""
    mix = dict.fromkeys(OPERATIONS, 0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = (s.strip() for s in part.partition("="))
        if not sep or name not in mix or not (weight.isascii() and weight.isdigit()):
            raise ValueError(f"expected <{'|'.join(OPERATIONS)}>=<integer weight>, got {part!r}")
        mix[name] = int(weight)
    if sum(mix.values()) <= 0:
        raise ValueError("the weights add up to 0")
    return mix


def _latencies(rec: Recorder) -> dict[str, dict[str, float]]:
    table = {}
    for op, histogram in rec.latencies.items():
        row = {"count": histogram.count, "max_ms": round(histogram.max_ms, 2)}
        row |= {f"p{p}_ms": round(histogram.percentile(p), 2) for p in PERCENTILES}
        table[op] = row
    return table


def _unexpected(rec: Recorder) -> int:
    """Answers the money and balance requests should never get (setup has its own checks)."""
    return sum(
        n
        for (op, status, code), n in rec.outcomes.items()
        if op not in SETUP_OPERATIONS
        and status
        and status not in EXPECTED
        and (status, code) not in EXPECTED
    )


async def _with_bar(
    progress: Progress,
    label: str,
    total: float,
    status: Callable[[], tuple[float, str]],
    work: Awaitable[T],
) -> T:
    """Awaits ``work`` while a progress bar shows ``status()`` (done, text) 4 times a second."""
    task = progress.add_task(label, total=total, status="")

    async def tick() -> None:
        while True:
            done, text = status()
            progress.update(task, completed=done, status=text)
            await asyncio.sleep(0.25)

    ticker = asyncio.create_task(tick())
    try:
        return await work
    finally:
        ticker.cancel()
        done, text = status()
        progress.update(task, completed=done, status=text)


async def _drive(driver: Driver, config: LoadtestConfig) -> tuple[float, float]:
    """Setup and run under progress bars; returns how long each took, in seconds."""
    rec, loop = driver.rec, asyncio.get_running_loop()
    progress = Progress(
        TextColumn("{task.description:>5}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not config.progress,
    )
    with progress:

        def funded() -> tuple[float, str]:
            return len(rec.acked), f"{len(rec.acked)}/{config.users} users"

        setup_start = loop.time()
        await _with_bar(progress, "setup", config.users, funded, driver.set_up())
        start = loop.time()
        samples = [(start, 0)]  # for the rate over the last second

        def running() -> tuple[float, str]:
            now, done = loop.time(), driver.done_in_run
            samples.append((now, done))
            while len(samples) > 2 and now - samples[1][0] >= 1.0:
                samples.pop(0)
            rate = (done - samples[0][1]) / max(now - samples[0][0], 1e-3)
            failed = sum(n for (_, s, code), n in rec.outcomes.items() if code or not s)
            text = f"{done} requests  {rate:,.0f} req/s  {failed} refused or failed"
            return min(now - start, config.duration_s), text

        run = driver.run(start + config.duration_s)
        await _with_bar(progress, "run", config.duration_s, running, run)
        return start - setup_start, loop.time() - start


async def run_loadtest(config: LoadtestConfig) -> LoadtestResult:
    """The whole run; raises LoadtestAborted if the service cannot be reached or the
    users cannot be set up."""
    async with client_session(config) as session:
        driver = Driver(config, session)
        setup_s, elapsed = await _drive(driver, config)
        rec = driver.rec
        result = LoadtestResult({}, rec.violations)
        run_ops = [op for op in rec.latencies if op.split()[0] in OPERATIONS]
        answered = sum(rec.latencies[op].count for op in run_ops)
        result.figures = {
            "config": _config_figures(config),
            "setup_s": round(setup_s, 3),
            "duration_s": round(elapsed, 3),
            "operations": driver.done_in_run,
            "requests_answered": answered,
            "throughput_rps": round(answered / elapsed, 1),
            "latency": _latencies(rec),
            "errors": [
                {"operation": op, "status": status, "code": code, "count": n}
                for (op, status, code), n in sorted(rec.outcomes.items())
                if code or not status
            ],
            "idempotency_replays": {"sent": rec.replays, "identical": rec.replays_identical},
        }
        if unexpected := _unexpected(rec):
            result.violations.append(
                f"{unexpected} answers other than 200, 201, 409 or 422 refund_exceeds_transfer"
            )
        result.figures["balances"] = await check_balances(driver, result.violations)
        result.figures["holds_batches_refunds"] = hold_figures(rec)
    if config.redis_url and config.database_url:
        settings = Settings(redis_url=config.redis_url, database_url=config.database_url)
        result.figures["ledger"] = await check_ledger(
            settings, config.writer_wait_s, rec, result.violations
        )
    result.figures["violations"] = result.violations
    result.figures["ok"] = result.ok
    return result


def _config_figures(config: LoadtestConfig) -> dict[str, Any]:
    return {
        "url": config.url,
        "users": config.users,
        "concurrency": config.concurrency,
        "duration_s": config.duration_s,
        "mix": config.mix,
        "idempotency_keys": config.idempotency_keys,
        "ledger_checks": bool(config.redis_url and config.database_url),
        "request_timeout_s": config.request_timeout_s,
    }


def format_result(result: LoadtestResult) -> str:
    f = result.figures
    lines = [
        f"{f['operations']} operations in {f['duration_s']:.1f} s: {f['throughput_rps']:,.0f}"
        f" requests/s (answered requests of the run, replays included);"
        f" setup of {f['config']['users']} users took {f['setup_s']:.1f} s",
        "",
        f"{'operation':<22}{'count':>9}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for op, row in f["latency"].items():
        lines.append(
            f"{op:<22}{row['count']:>9}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}"
        )
    lines += ["", "errors by (operation, status, code):" if f["errors"] else "no errors"]
    for e in f["errors"]:
        lines.append(f"  {e['operation']:<20} {e['status']:>3} {e['code']:<24} {e['count']:>8}")
    replays = f["idempotency_replays"]
    if replays["sent"]:
        lines.append(f"idempotent replays: {replays['identical']}/{replays['sent']} identical")
    b = f["balances"]
    lines.append(
        f"balances: {b['users']} users, sum {b['sum_balances_kopecks']} kopecks,"
        f" acknowledged deposits {b['sum_acknowledged_deposits_kopecks']} kopecks;"
        f" held {b['sum_held_kopecks']} kopecks"
    )
    h = f["holds_batches_refunds"]
    lines.append(
        f"holds: {h['holds']} acknowledged, {h['captured']} captured, {h['voided']} voided,"
        f" {h['expired_seen']} expired, {h['pending_known']} pending"
        f" ({h['pending_known_kopecks']} kopecks); batches: {h['batches']}"
        f" ({h['batch_legs']} legs); refunds: {h['refunds']} ({h['refunded_kopecks']} kopecks)"
    )
    if "ledger" in f:
        led = f["ledger"]
        lines.append(
            f"ledger: {led['ledger_rows']} rows for {led['acknowledged_transactions']}"
            f" acknowledged transactions, {led['hold_rows']} holds, {led['hold_events']}"
            f" hold events; writer caught up in {led['writer_wait_s']} s;"
            f" reconcile {'OK' if led['reconcile_ok'] else 'FAILED'}"
        )
    else:
        lines.append("ledger: not checked (no --redis-url/--database-url)")
    lines.append("")
    lines += [f"VIOLATION: {v}" for v in result.violations] or ["all invariants hold"]
    return "\n".join(lines)
