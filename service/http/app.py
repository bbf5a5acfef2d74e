"""The aiohttp application factory."""

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_session import session_middleware

from persistence.db import connect_database
from persistence.migrate import schema_problem
from service.auth.login_throttle import LoginThrottle
from service.auth.passwords import Passwords
from service.auth.sessions import WalletSessionStorage
from service.auth.window_limit import WindowLimit
from service.domain.limits import MAX_BODY_BYTES
from service.http.errors import error_middleware
from service.http.logs import ACCESS_LOG, SERVER_LOG, JsonAccessLogger, request_id_middleware
from service.http.metrics import metrics_middleware
from service.http.openapi import build_spec
from service.http.routes import setup_routes
from service.http.state import (
    BATCHES,
    DATABASE,
    HOLDS,
    ID_BUCKETS,
    LOGIN_THROTTLE,
    MONEY,
    OPENAPI_SPEC,
    PASSWORDS,
    RECIPIENT_MISS_LIMIT,
    REDIS,
    REFUNDS,
    SESSIONS,
    SETTINGS,
    SIGN_UP_LIMIT,
)
from service.ledger.bucket_count import check_bucket_count
from service.ledger.id_buckets import IdBuckets
from service.ledger.rebuild import ensure_transaction_counter
from service.outages import is_outage
from service.redis import keyspace
from service.redis.batches import BatchScripts
from service.redis.checks import check_redis_durability
from service.redis.client import connect_redis
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts
from service.redis.refunds import RefundScripts
from service.redis.streams import ensure_consumer_group
from service.settings import Settings

log = logging.getLogger("wallet.app")

# After answering a request whose body it did not read (a 408, a 413), aiohttp reads on and
# discards for this long, so that the client gets the answer rather than a reset; no longer,
# or a client trickling its body would keep its connection after the 408.
LINGER_AFTER_UNREAD_BODY_S = 2.0


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[REDIS].aclose()


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    app[DATABASE] = connect_database(app[SETTINGS])
    app[ID_BUCKETS] = IdBuckets(app[DATABASE])
    yield
    await app[DATABASE].dispose()


async def _passwords_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    app[PASSWORDS].close()


class SchemaMissing(RuntimeError):
    """The database answers but has not the schema: `wallet migrate` was not run."""


async def _startup_checks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refuses an evicting Redis, a database without the schema and a count of buckets other
    than the deployment's; prepares the consumer groups and the id counters.

    An unreachable Redis or database does not stop the start (a worker restarted during
    an outage must come up and answer /readyz); the checks then wait for the next start.
    """
    settings, redis = app[SETTINGS], app[REDIS]
    try:
        await check_redis_durability(redis, settings.allow_evicting_redis)
        # Before the first transaction: without the group every entry counts as unpersisted.
        for bucket in keyspace.all_buckets():
            await ensure_consumer_group(redis, bucket)
        problem = await schema_problem(app[DATABASE])
        if problem is not None:
            raise SchemaMissing(problem)
        await check_bucket_count(redis, app[DATABASE], settings.buckets)
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


async def _response_headers(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp names itself and Python, with their versions: nothing a client needs.
    response.headers.popall("Server", None)
    # Balances, histories and sessions stay out of every cache, shared or the browser's;
    # a handler that means its answer to be cached says so itself.
    response.headers.setdefault("Cache-Control", "no-store")


def create_app(settings: Settings) -> web.Application:
    # The Redis client is made here because the session middleware needs it before
    # start-up; it opens no connection until the first request, and _redis_ctx closes it.
    redis = connect_redis(settings)
    sessions = WalletSessionStorage(redis, settings)
    # The session middleware only loads sessions: they are stored and ended by
    # service/auth/sessions.py, never saved through it.
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            request_id_middleware,
            metrics_middleware,
            session_middleware(sessions),
            error_middleware,
        ],
        # How aiohttp treats each connection, whoever runs the app (gunicorn's worker, the
        # embedded mode, the tests' server): these override what the runner passes.
        handler_args={
            # A handler runs to its end when its client leaves (aiohttp's test server would
            # cancel it): a money script already sent is counted, and no pooled connection
            # is torn mid-command.
            "handler_cancellation": False,
            "keepalive_timeout": settings.keepalive_timeout_s,
            "lingering_time": LINGER_AFTER_UNREAD_BODY_S,
            "logger": SERVER_LOG,
            "access_log_class": JsonAccessLogger,
            "access_log": ACCESS_LOG,
        },
    )
    app.on_response_prepare.append(_response_headers)
    app[SETTINGS] = settings
    app[REDIS] = redis
    app[SESSIONS] = sessions
    app[MONEY] = MoneyScripts(redis, settings)
    app[HOLDS] = HoldScripts(redis, settings)
    app[BATCHES] = BatchScripts(redis, settings)
    app[REFUNDS] = RefundScripts(redis, settings)
    app[PASSWORDS] = Passwords(settings)
    app[LOGIN_THROTTLE] = LoginThrottle(redis, settings)
    app[SIGN_UP_LIMIT] = WindowLimit(
        redis, settings.sign_up_max_per_address, settings.sign_up_window_s
    )
    app[RECIPIENT_MISS_LIMIT] = WindowLimit(
        redis, settings.recipient_not_found_max_per_user, settings.recipient_not_found_window_s
    )
    app.cleanup_ctx.extend([_redis_ctx, _database_ctx, _passwords_ctx, _startup_checks_ctx])
    app[OPENAPI_SPEC] = build_spec()
    setup_routes(app)
    return app
