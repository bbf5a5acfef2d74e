"""GET /healthz (the process answers) and GET /readyz (Redis and the database answer)."""

import asyncio

from aiohttp import web
from sqlalchemy import text

from service.errors import json_response
from service.state import DATABASE, REDIS

routes = web.RouteTableDef()

READY_CHECK_TIMEOUT_S = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _check_redis(request: web.Request) -> None:
    await request.app[REDIS].ping()


async def _check_database(request: web.Request) -> None:
    async with request.app[DATABASE].connect() as connection:
        await connection.execute(text("SELECT 1"))


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """503 names what is down. Money keeps moving while only the database is down."""
    checks = {"redis": _check_redis, "database": _check_database}
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(request), READY_CHECK_TIMEOUT_S)
            report[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason is reported
            report[name] = f"unavailable: {type(exc).__name__}"
    ready = all(state == "ok" for state in report.values())
    return json_response(
        {"status": "ready" if ready else "degraded", **report}, 200 if ready else 503
    )
