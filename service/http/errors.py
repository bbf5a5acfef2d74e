"""The contract's error model: a status code and {"error": {"code", "message", "field"?}};
a validation_error also lists every problem: "errors": [{"field"?, "message"}, ...].

Every refusal is a ``Refused`` carrying an entry of the catalog
(service/domain/refusals.py); this middleware renders it, and renders aiohttp's own HTTP
errors, outages and bugs in the same shape.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from service.domain import refusals
from service.domain.refusals import Refused
from service.http.schemas import BOTH_RECIPIENTS, FIELD_RULES, NO_RECIPIENT
from service.ledger.history import HistoryUnavailable
from service.outages import is_outage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("wallet.http")

# On every answer that an Idempotency-Key replayed (a 201 or a recorded refusal), as the
# contract's Guarantees name it.
REPLAYED_HEADER = "Idempotent-Replayed"


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request: the field at fault (None: the body as a whole) and
    what it must be, in words."""

    field: str | None
    message: str

    def as_json(self) -> dict[str, str]:
        if self.field is None:
            return {"message": self.message}
        return {"field": self.field, "message": self.message}


class InvalidInput(Refused):
    """A 422 validation_error with every problem found, in the body's order: ``field`` is
    the first one's (as before there was a list), ``message`` says them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(
            refusals.VALIDATION_ERROR,
            "; ".join(problem.message for problem in problems),
            problems[0].field,
        )
        self.problems = tuple(problems)


def error_response(refused: Refused) -> web.Response:
    error: dict[str, object] = {"code": refused.code, "message": refused.message}
    if refused.field is not None:
        error["field"] = refused.field
    if refused.code == refusals.VALIDATION_ERROR.code:
        problems = (
            refused.problems
            if isinstance(refused, InvalidInput)
            else (Problem(refused.field, refused.message),)
        )
        error["errors"] = [problem.as_json() for problem in problems]
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


def _problem(error: ErrorDetails) -> Problem:
    """What pydantic found, in words a person reads: the field's rule (FIELD_RULES), never
    pydantic's own text or a pattern."""
    location, kind = error["loc"], error["type"]
    field = _field_path(location)
    if kind == "extra_forbidden":
        return Problem(field, f"{field} is not a field of this request")
    if kind in ("model_type", "dict_type"):
        return Problem(field, f"{field or 'the body'} must be a JSON object")
    if kind in (BOTH_RECIPIENTS, NO_RECIPIENT):
        rule = (
            "give either to_user_id or to_username, not both"
            if kind == BOTH_RECIPIENTS
            else "give to_user_id or to_username"
        )
        return Problem(field, rule if field is None else f"{field}: {rule}")
    name = next(part for part in reversed(location) if isinstance(part, str))
    if kind == "missing":
        return Problem(field, f"{field} is required: {FIELD_RULES[name]}")
    return Problem(field, f"{field} must be {FIELD_RULES[name]}")


def validation_error(exc: ValidationError) -> InvalidInput:
    """Every problem, each naming its field."""
    return InvalidInput([_problem(error) for error in exc.errors(include_url=False)])


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
