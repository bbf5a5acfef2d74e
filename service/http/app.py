"""The aiohttp application factory."""

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_session import session_middleware

from persistence.db import connect_database
from service.auth.passwords import Passwords
from service.auth.sessions import WalletSessionStorage
from service.auth.throttle import LoginThrottle
from service.domain.limits import MAX_BODY_BYTES
from service.http.errors import error_middleware
from service.http.logs import request_id_middleware
from service.http.metrics import metrics_middleware
from service.http.openapi import build_spec
from service.http.routes import setup_routes
from service.http.state import (
    DATABASE,
    MONEY,
    OPENAPI_SPEC,
    PASSWORDS,
    REDIS,
    SESSIONS,
    SETTINGS,
    THROTTLE,
)
from service.ledger.rebuild import ensure_transaction_counter
from service.outages import is_outage
from service.redis.checks import check_redis_durability
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.streams import ensure_consumer_group
from service.settings import Settings

log = logging.getLogger("wallet.app")


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[REDIS].aclose()


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    app[DATABASE] = connect_database(app[SETTINGS])
    yield
    await app[DATABASE].dispose()


async def _startup_checks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refuses an evicting Redis; prepares the consumer group and the id counter.

    An unreachable Redis or database does not stop the start (a worker restarted during
    an outage must come up and answer /readyz); the checks then wait for the next start.
    """
    settings, redis = app[SETTINGS], app[REDIS]
    try:
        await check_redis_durability(redis, settings.allow_evicting_redis)
        # Before the first transaction: without the group every entry counts as unpersisted.
        await ensure_consumer_group(redis)
        if not await ensure_transaction_counter(redis, app[DATABASE]):
            log.error(
                "Redis has no transaction counter but the ledger holds transactions: Redis"
                " lost its data. Deposits and transfers are refused until `wallet rebuild`."
            )
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("started while a backend is unreachable (%s); see /readyz", exc)
    yield


def create_app(settings: Settings) -> web.Application:
    # The Redis client is made here because the session middleware needs it before
    # start-up; it opens no connection until the first request, and _redis_ctx closes it.
    redis = connect_redis(settings)
    sessions = WalletSessionStorage(redis, settings)
    # Sessions outside the error middleware: a session invalidated by a handler that then
    # answers with an error is still saved (deleted).
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            request_id_middleware,
            metrics_middleware,
            session_middleware(sessions),
            error_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[REDIS] = redis
    app[SESSIONS] = sessions
    app[MONEY] = MoneyScripts(redis, settings)
    app[PASSWORDS] = Passwords(settings)
    app[THROTTLE] = LoginThrottle(redis, settings)
    app.cleanup_ctx.extend([_redis_ctx, _database_ctx, _startup_checks_ctx])
    app[OPENAPI_SPEC] = build_spec()
    setup_routes(app)
    return app
