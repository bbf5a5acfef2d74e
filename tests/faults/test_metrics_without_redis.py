"""GET /metrics of a real `wallet serve --workers 2` (multi-process mode) while its Redis,
an instance of the test's own, is stopped and started again: it keeps answering, says that
Redis is down and leaves out the gauges read from Redis; and it has the process_* of the
gunicorn master and of each worker, by pid."""

import time

from service.http.ledger_gauges import REDIS_READ_TIMEOUT_S
from tests.support.faults.procs import Processes, RedisServer, wallet_env
from tests.support.scrape import Page, scrape, scrape_until

READ_FROM_REDIS = (
    "wallet_stream_entries",
    "wallet_writer_lag_entries",
    "wallet_writer_pending_entries",
    "wallet_writer_lag_seconds",
    "wallet_dead_letter_entries",
    "wallet_redis_used_memory_bytes",
    "wallet_redis_maxmemory_bytes",
)


def redis_up(page: Page) -> bool:
    return page.find("wallet_redis_up") == 1


async def test_metrics_answer_while_redis_is_stopped_and_cover_every_process(
    processes: Processes, own_redis: RedisServer, shared_servers: tuple[str, str]
) -> None:
    _, database_url = shared_servers
    serve = processes.serve(wallet_env(own_redis.url, database_url))
    await serve.start()
    metrics_url = f"http://127.0.0.1:{serve.metrics_port}"

    page = await scrape_until(metrics_url, redis_up)
    assert all(page.find(name) is not None for name in READ_FROM_REDIS), page.text
    every_process = {str(pid) for pid in [serve.pid, *serve.worker_pids()]}
    assert len(every_process) == 3
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert page.labels(name, "pid") == every_process, name
    assert page.value("process_resident_memory_bytes", pid=str(serve.pid)) > 0
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    probes = page.value("wallet_http_requests_total", **healthz)

    own_redis.stop_server()
    started = time.monotonic()
    status, page = await scrape(metrics_url)
    assert status == 200
    assert time.monotonic() - started < REDIS_READ_TIMEOUT_S + 1
    assert page.value("wallet_redis_up") == 0
    assert not set(READ_FROM_REDIS) & page.names(), page.text
    # What needs no Redis is all there.
    assert page.value("wallet_http_requests_total", **healthz) == probes
    assert page.labels("process_resident_memory_bytes", "pid") == every_process

    own_redis.start()
    await own_redis.wait_ready()
    page = await scrape_until(metrics_url, redis_up)
    assert all(page.find(name) is not None for name in READ_FROM_REDIS), page.text
