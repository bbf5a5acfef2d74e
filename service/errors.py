"""The contract's error model: a status code and {"error": {"code", "message", "field"?}}."""

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("wallet.http")

# Redis or the database cannot be reached: an outage, not a bug (which stays a 500).
BACKEND_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    OSError,
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    response = json_response(error_body(error.code, error.message, error.field), error.status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem, naming the field at fault."""
    first = exc.errors(include_url=False)[0]
    location = [str(part) for part in first["loc"]]
    field = ".".join(location) if location else None
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "model_type" or first["type"] == "dict_type":
        message = "the body must be a JSON object"
    else:
        message = first["msg"]
    return ApiError(422, "validation_error", message, field)


_HTTP_CODES = {
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    413: ("payload_too_large", "the request body is larger than 64 KiB"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Renders every failure in the contract's shape; nothing else leaks (no tracebacks)."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        response = json_response(error_body(code, message), exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionResetError:
        raise  # the client went away: nobody to answer, nothing to log as our failure
    except BACKEND_UNAVAILABLE as exc:
        log.warning("backend unavailable on %s %s: %r", request.method, request.path, exc)
        body = error_body("service_unavailable", "a backend is unavailable; try again shortly")
        response = json_response(body, 503)
        response.headers["Retry-After"] = "1"
        return response
    except Exception:
        # A bug or an outage (Redis or the database down): logged with its traceback,
        # answered in the contract's shape without details.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(error_body("internal_error", "internal error; try again"), 500)
