"""GET /healthz (the process answers), GET /readyz (Redis and the database answer) and
GET /api/openapi.json."""

import asyncio
import logging

from aiohttp import web
from sqlalchemy import text

from service.http.errors import json_response
from service.http.state import DATABASE, OPENAPI_SPEC, REDIS
from service.redis.nodes import on_every_primary

READY_CHECK_TIMEOUT_S = 2.0
log = logging.getLogger("wallet.ops")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _check_redis(request: web.Request) -> None:
    await on_every_primary(request.app[REDIS], "PING")


async def _check_database(request: web.Request) -> None:
    async with request.app[DATABASE].connect() as connection:
        await connection.execute(text("SELECT 1"))


async def readyz(request: web.Request) -> web.Response:
    """503 names what is down, "ok" or "unavailable" and nothing more: the address is
    public, the reason goes to the log. Money keeps moving while only the database is
    down."""
    checks = {"redis": _check_redis, "database": _check_database}
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(request), READY_CHECK_TIMEOUT_S)
            report[name] = "ok"
        except Exception as exc:  # any failure means not ready
            log.warning("readiness: %s unavailable: %r", name, exc)
            report[name] = "unavailable"
    ready = all(state == "ok" for state in report.values())
    return json_response(
        {"status": "ready" if ready else "degraded", **report}, 200 if ready else 503
    )


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_SPEC])
