"""Reading a request: JSON bodies through the strict models, query strings, headers."""

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from service.domain import refusals
from service.domain.limits import is_valid_idempotency_key
from service.domain.refusals import Refused
from service.http.errors import validation_error
from service.http.state import SETTINGS

Body = TypeVar("Body", bound=BaseModel)


class _DuplicateKey(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # An amount given twice is ambiguous: parsers disagree on which one wins.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name)
            seen.add(name)
    return result


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """Only application/json is read, so a cross-site HTML form cannot post here.

    The body must be UTF-8 JSON without NaN/Infinity and without a key given twice;
    then the model validates it strictly (no coercion, no unknown fields).
    """
    if request.content_type != "application/json":
        raise Refused(refusals.UNSUPPORTED_MEDIA_TYPE)
    # Refused on the declared length, before waiting for a body that may never come.
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, request.content_length)
    try:
        # A body trickled in (or never sent) would hold the connection for as long as the
        # client likes; aiohttp itself waits for ever.
        async with asyncio.timeout(request.app[SETTINGS].request_body_timeout_s):
            raw = await request.read()  # aiohttp answers 413 past client_max_size (64 KiB)
    except TimeoutError:
        raise Refused(refusals.REQUEST_TIMEOUT) from None
    except RequestPayloadError:
        raise Refused(
            refusals.MALFORMED_JSON, "the body does not match its Content-Encoding"
        ) from None
    try:
        data = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object_without_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except _DuplicateKey as duplicate:
        raise Refused(refusals.VALIDATION_ERROR, "given twice", duplicate.name) from None
    except (ValueError, RecursionError):  # includes UnicodeDecodeError and JSONDecodeError
        raise Refused(refusals.MALFORMED_JSON) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def refuse_unknown_query(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise Refused(refusals.VALIDATION_ERROR, "unknown query parameter", name)
    for name in allowed:
        if len(request.query.getall(name, [])) > 1:
            raise Refused(refusals.VALIDATION_ERROR, "give this parameter once", name)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not is_valid_idempotency_key(key):
        raise Refused(
            refusals.VALIDATION_ERROR, "1-64 printable ASCII characters", "Idempotency-Key"
        )
    return key
