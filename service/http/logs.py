"""Structured logs: one JSON object per line, with the request id of the request at hand."""

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

from aiohttp import web

from service.http.errors import Handler

REQUEST_ID_HEADER = "X-Request-Id"
# A client's own id is kept if it is short and plain; anything else is replaced.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Seven lines naming alembic's plugins whenever alembic loads: nothing to act on.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    current = given if _ACCEPTABLE_ID.fullmatch(given) else uuid.uuid4().hex
    token = request_id.set(current)
    try:
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = current
        return response
    finally:
        request_id.reset(token)
