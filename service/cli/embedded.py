"""`wallet serve --embedded`: the whole service in one process, no servers to install.

Redis is in-process (fakeredis, running the same Lua scripts) and the ledger is an
SQLite file. At every start the schema is migrated and Redis is rebuilt from that file;
the writer runs as a task and, on a graceful stop, drains the stream completely.
Killed with SIGKILL, it loses the transactions the writer had not yet stored (normally
well under a second's worth): it is for trying the service, not for production.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from persistence.migrate import migrate
from service.http.app import create_app
from service.http.state import DATABASE, REDIS, SETTINGS
from service.ledger.rebuild import format_report, rebuild
from service.ledger.writer import StreamWriter
from service.redis.client import MEMORY_URL
from service.settings import Settings

log = logging.getLogger("wallet.embedded")
LEDGER_FILE = "ledger.sqlite3"


def embedded_settings(settings: Settings, data_dir: Path) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "redis_url": MEMORY_URL,
            "database_url": f"sqlite+aiosqlite:///{(data_dir / LEDGER_FILE).resolve()}",
        }
    )


async def _ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, redis, engine = app[SETTINGS], app[REDIS], app[DATABASE]
    await migrate(engine)
    log.info("%s", format_report(await rebuild(redis, engine, settings.idempotency_ttl_s)))
    writer = StreamWriter(settings, redis, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    yield
    stop.set()
    await task
    while await writer.drain_once():
        pass


def create_embedded_app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app.cleanup_ctx.append(_ledger_ctx)
    return app
