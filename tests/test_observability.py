"""deploy/: every metric the Grafana dashboard and the alert rules select is one the service
exports under that job, as real scrapes show it: `wallet serve --workers 2` (job
wallet-api) after some money moved, and a `wallet writer` (job wallet-writer) that stored
it; and docs/operations.md describes every one of the service's own."""

from pathlib import Path
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from service.redis.types import RedisClient
from tests.support.deploy_files import (
    alert_rules,
    as_prometheus_reads_it,
    dashboard_queries,
    selectors,
)
from tests.support.faults.procs import Processes, wallet_env
from tests.support.http_helpers import Client, new_user
from tests.support.scrape import Page, scrape_until
from tests.support.served import ServedClient, wallet_serve

# Made by Prometheus itself for every target, not by the service.
PROMETHEUS_OWN = {"up"}


async def test_the_dashboard_and_the_alerts_select_only_what_the_service_exports(
    processes: Processes,
    redis_url: str,
    database_url: str,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    with wallet_serve(redis_url, database_url, tmp_path / "serve.log") as served:
        client = ServedClient(served.base_url)
        try:
            api = cast(Client, client)
            alice = await new_user(api, "alice", deposit_kopecks=500)
            bob = await new_user(api, "bob")
            status, _ = await alice.post(
                api, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 200}
            )
            assert status == 201
        finally:
            await client.close()
        writer = processes.writer(wallet_env(redis_url, database_url))
        writer.start()
        writer_page = await scrape_until(
            writer.metrics_url, lambda p: p.value("wallet_writer_entries_persisted_total") >= 2
        )
        api_page = await scrape_until(
            served.metrics_url,
            lambda p: p.find("wallet_redis_up") == 1 and p.find("wallet_writer_lag_entries") == 0,
        )
    exported: dict[str, Page] = {"wallet-api": api_page, "wallet-writer": writer_page}

    expressions = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    expressions += [(title, as_prometheus_reads_it(expr)) for title, expr in dashboard_queries()]
    used: set[str] = set()
    for where, expression in expressions:
        for name, job in selectors(expression):
            used.add(name)
            if name in PROMETHEUS_OWN:
                continue
            assert job is not None, f"{where}: {name} names no job"
            for each in job.split("|"):
                assert name in exported[each].names(), f"{where}: {each} does not export {name}"
    # And docs/operations.md describes every metric of the service's own.
    operations = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    for page in exported.values():
        for family in page.families:
            if family.name.startswith("wallet_"):
                assert f"`{family.name}" in operations, family.name
    # The point of them: the ledger, the writer, Redis and the processes are all watched.
    for name in (
        "wallet_writer_lag_seconds",
        "wallet_dead_letter_entries",
        "wallet_stream_entries",
        "wallet_redis_used_memory_bytes",
        "wallet_writer_last_read_timestamp_seconds",
        "wallet_money_operations_total",
        "process_resident_memory_bytes",
    ):
        assert name in used, name
