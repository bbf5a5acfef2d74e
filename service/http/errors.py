"""The contract's error model: a status code and {"error": {"code", "message", "field"?}}.

Every refusal is a ``Refused`` carrying an entry of the catalog
(service/domain/refusals.py); this middleware renders it, and renders aiohttp's own HTTP
errors, outages and bugs in the same shape.
"""

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import ValidationError

from service.domain import refusals
from service.domain.refusals import Refused
from service.ledger.history import HistoryUnavailable
from service.outages import is_outage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("wallet.http")

# On every answer that an Idempotency-Key replayed (a 201 or a recorded refusal), as the
# contract's Guarantees name it.
REPLAYED_HEADER = "Idempotent-Replayed"


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(refused: Refused) -> web.Response:
    error: dict[str, object] = {"code": refused.code, "message": refused.message}
    if refused.field is not None:
        error["field"] = refused.field
    response = json_response({"error": error}, refused.refusal.status)
    if refused.retry_after_s is not None:
        response.headers["Retry-After"] = str(refused.retry_after_s)
    if refused.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def _field_path(location: tuple[int | str, ...]) -> str | None:
    """``("transfers", 3, "amount")`` -> ``"transfers[3].amount"``, as the contract names a
    batch's leg."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or None


def validation_error(exc: ValidationError) -> Refused:
    """The first problem, naming the field at fault."""
    first = exc.errors(include_url=False)[0]
    field = _field_path(first["loc"])
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "model_type" or first["type"] == "dict_type":
        message = "the body must be a JSON object"
    else:
        message = first["msg"]
    return Refused(refusals.VALIDATION_ERROR, message, field)


_HTTP_ERRORS = {
    404: refusals.NOT_FOUND,
    405: refusals.METHOD_NOT_ALLOWED,
    413: refusals.PAYLOAD_TOO_LARGE,
}


def _client_left(request: web.Request) -> bool:
    # aiohttp drops the transport of a connection the client closed.
    return request.transport is None or request.transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every failure in the contract's shape; nothing else leaks (no tracebacks)."""
    try:
        return await handler(request)
    except Refused as refused:
        return error_response(refused)
    except HistoryUnavailable:
        # Any read that merges the ledger with the stream's unpersisted tail.
        return error_response(Refused(refusals.HISTORY_UNAVAILABLE))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        refusal = _HTTP_ERRORS.get(exc.status)
        if refusal is None:  # no other HTTP error is raised by aiohttp on a route of ours
            log.error("unexpected HTTP error %d on %s %s", exc.status, request.method, request.path)
            refusal = refusals.INTERNAL_ERROR
        response = error_response(Refused(refusal))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_left(request):
            # Reading the body of a client that hung up: nobody to answer, and no failure
            # of ours. The 499 is never sent; it is what the request is counted and logged as.
            return error_response(Refused(refusals.CLIENT_CLOSED_REQUEST))
        if is_outage(exc):
            log.warning("backend unavailable on %s %s: %r", request.method, request.path, exc)
            return error_response(Refused(refusals.SERVICE_UNAVAILABLE))
        # A bug: logged with its traceback, answered in the contract's shape without details.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(Refused(refusals.INTERNAL_ERROR))
