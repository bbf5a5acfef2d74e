"""Reading a request: JSON bodies through the strict models, query strings, headers."""

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from service.errors import ApiError, validation_error
from service.money import is_valid_idempotency_key

Body = TypeVar("Body", bound=BaseModel)


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """Only application/json is read, so a cross-site HTML form cannot post here."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()  # aiohttp answers 413 past client_max_size (64 KiB)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def refuse_unknown_query(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise ApiError(422, "validation_error", "unknown query parameter", name)
    for name in allowed:
        if len(request.query.getall(name, [])) > 1:
            raise ApiError(422, "validation_error", "give this parameter once", name)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not is_valid_idempotency_key(key):
        raise ApiError(
            422, "validation_error", "1-64 printable ASCII characters", "Idempotency-Key"
        )
    return key
