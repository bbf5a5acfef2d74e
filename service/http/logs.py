"""Structured logs: one JSON object per line on stderr, with the request id of the request
at hand; one access line per request answered.

Every line goes through the root logger's one handler: ours, aiohttp's, and gunicorn's (the
master and its workers are given the same configuration, ``logging_config``).
"""

import contextvars
import itertools
import logging
import logging.config
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from service.http.errors import Handler

REQUEST_ID_HEADER = "X-Request-Id"
# A client's own id is kept if it is short and plain; anything else is replaced.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# What the access line needs once the middlewares are done (the context variable is reset
# by then). Absent from a request aiohttp refused before routing it (a malformed one).
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)


class _RequestIds:
    """Request ids unique across processes without a system call each (uuid4 reads
    /dev/urandom for every request): 64 random bits per process, then a counter; 32 hex
    digits. A forked worker draws its own random half."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_REQUEST_IDS = _RequestIds()

# aiohttp's own messages about connections and requests (handler_args "logger" in app.py).
SERVER_LOG = logging.getLogger("wallet.server")
ACCESS_LOG = logging.getLogger("wallet.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            # Which process: the gunicorn master or one of its workers.
            "pid": record.process,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        # Named values of the line (the access line's method, route, status...).
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # orjson: a tenth of json.dumps's cost, on a line written for every request; it keeps
        # non-ASCII text as UTF-8, as ensure_ascii=False did.
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str) -> dict[str, Any]:
    """For logging.config.dictConfig, and for gunicorn's ``logconfig_dict``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn gives its logger a plain-text handler of its own and stops it there:
            # none here, so that its lines reach the JSON handler above.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            # Seven lines naming alembic's plugins whenever alembic loads: nothing to act on.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure_logging(level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(level))
    # dictConfig keeps this stream as the handler's: flush what was printed before.
    sys.stderr.flush()


class _WithoutRequestBytes(logging.Filter):
    """aiohttp logs a request it could not parse with the parser's error, whose text quotes
    up to 100 bytes of the offending line: of an oversized Cookie header, the session id.
    The line keeps the kind of error and loses the bytes, and is a warning: the fault is
    the client's."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "refused a request that could not be parsed: %d %s"
            record.args = (error.code, type(error).__name__)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# On the logger itself, not on a handler: whatever handlers are configured, no line of it
# carries request bytes.
SERVER_LOG.addFilter(_WithoutRequestBytes())


class JsonAccessLogger(AbstractAccessLogger):
    """One line per request answered (handler_args "access_log_class" in app.py). A request
    whose client left before the answer is logged with the status it was counted under."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.get(ROUTE)
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status,
            "latency_ms": round(time * 1000, 3),
            "request_id": request.get(REQUEST_ID),
        }
        self.logger.info(
            "%s %s %d", request.method, route, response.status, extra={"fields": fields}
        )


def route_of(request: web.Request) -> str:
    """The route's pattern (/api/holds/{id}/), never the path: bounded, and free of ids."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    current = given if _ACCEPTABLE_ID.fullmatch(given) else _REQUEST_IDS.new()
    request[REQUEST_ID] = current
    request[ROUTE] = route_of(request)
    token = request_id.set(current)
    try:
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = current
        return response
    finally:
        request_id.reset(token)
