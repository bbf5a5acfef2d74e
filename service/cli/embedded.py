"""`wallet serve --embedded`: the whole service with no servers to install.

It starts the real engines that ship as wheels (service/engines/): a Valkey server (an
append-only file fsynced before every reply, no eviction) and a PostgreSQL server, as
child processes with their data under ``--data-dir``. Then it migrates the ledger and runs
the API and the writer in this process, the same code as the real stack.

Durable like the real stack. A kill -9 of this process ends both servers cleanly (the
kernel signals them when their parent dies); what was acknowledged is in the append-only
file or committed, and the next start on the same directory resumes: the writer re-reads
what it had not acknowledged. A second start keeps every balance and history.
"""

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from persistence.migrate import migrate_database
from service.engines.postgres import start_postgres
from service.engines.valkey import start_valkey
from service.http.app import create_app
from service.http.serving import serve_until_stopped
from service.http.state import DATABASE, REDIS, SETTINGS
from service.ledger.hold_sweeper import run_writer_and_sweeper
from service.settings import Settings

log = logging.getLogger("wallet.embedded")
# How long requests in flight may take to finish once SIGINT or SIGTERM came.
SHUTDOWN_TIMEOUT_S = 30.0


@contextmanager
def embedded_engines(settings: Settings, data_dir: Path) -> Iterator[Settings]:
    """Both servers running on ``data_dir``; the settings that point at them. Stops them
    (Valkey last: the writer's last acknowledgements go there) on the way out."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with start_valkey(data_dir) as valkey, start_postgres(data_dir) as postgres:
        yield settings.model_copy(update={"redis_url": valkey.url, "database_url": postgres.url})


async def _writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The writer and the hold sweeper as tasks of this process; on the way out the writer
    finishes its batch."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_writer_and_sweeper(app[SETTINGS], app[REDIS], app[DATABASE], stop)
    )
    yield
    stop.set()
    await task


def serve_embedded(
    settings: Settings, data_dir: Path, api_socket: socket.socket, metrics_socket: socket.socket
) -> None:
    """Runs until SIGINT or SIGTERM, then stops the API, the writer and both servers."""
    started_s = time.monotonic()
    host, port = api_socket.getsockname()[:2]
    with embedded_engines(settings, data_dir) as engine_settings:
        # Where the data is, for a person or a tool to look at.
        print(
            f"wallet (embedded): Valkey on {engine_settings.redis_url}, PostgreSQL on"
            f" {engine_settings.database_url}, data in {data_dir}",
            flush=True,
        )
        asyncio.run(migrate_database(engine_settings))
        app = create_app(engine_settings)
        app.cleanup_ctx.append(_writer_ctx)

        def ready() -> None:
            elapsed_s = time.monotonic() - started_s
            print(
                f"wallet (embedded) listening on http://{host}:{port}, ready in {elapsed_s:.1f} s",
                flush=True,
            )

        asyncio.run(
            serve_until_stopped(
                app,
                api_socket,
                metrics_socket,
                engine_settings.max_connections,
                SHUTDOWN_TIMEOUT_S,
                ready,
            )
        )
