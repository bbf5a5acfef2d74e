"""The aiohttp application factory."""

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_session import session_middleware

from persistence.db import connect_database
from persistence.rebuild import ensure_transaction_counter
from persistence.writer import ensure_consumer_group
from service import auth_routes, health_routes, metrics, openapi, wallet_routes
from service.errors import BACKEND_UNAVAILABLE, error_middleware
from service.logs import request_id_middleware
from service.metrics import metrics_middleware
from service.money import MoneyScripts
from service.passwords import Passwords
from service.redis_checks import check_redis_durability
from service.redis_client import MEMORY_URL, connect_redis
from service.sessions import WalletSessionStorage
from service.settings import Settings
from service.state import DATABASE, MONEY, PASSWORDS, REDIS, SESSIONS, SETTINGS, THROTTLE
from service.throttle import LoginThrottle

MAX_BODY_BYTES = 64 * 1024
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
        if settings.redis_url != MEMORY_URL:
            await check_redis_durability(redis, settings.allow_evicting_redis)
        # Before the first transaction: without the group every entry counts as unpersisted.
        await ensure_consumer_group(redis)
        if not await ensure_transaction_counter(redis, app[DATABASE]):
            log.error(
                "Redis has no transaction counter but the ledger holds transactions: Redis"
                " lost its data. Deposits and transfers are refused until `wallet rebuild`."
            )
    except BACKEND_UNAVAILABLE as exc:
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
    app[MONEY] = MoneyScripts(redis, settings.idempotency_ttl_s)
    app[PASSWORDS] = Passwords(settings)
    app[THROTTLE] = LoginThrottle(redis, settings)
    app.cleanup_ctx.extend([_redis_ctx, _database_ctx, _startup_checks_ctx])
    for module in (auth_routes, wallet_routes, health_routes, openapi, metrics):
        app.router.add_routes(module.routes)
    return app
