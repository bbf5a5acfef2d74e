"""Reading a request: JSON bodies through the strict models, query strings, headers."""

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from service.domain import refusals
from service.domain.cursor import decode_time_cursor
from service.domain.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, is_valid_idempotency_key
from service.domain.refusals import Refusal, Refused
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


# Made once: json.loads with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicate_keys, parse_constant=_refuse_constant
)


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
        if request.content.is_eof():  # all of it came with the headers: nothing to wait for
            raw = await request.read()
        else:
            # A body trickled in (or never sent) would hold the connection for as long as
            # the client likes; aiohttp itself waits for ever.
            async with asyncio.timeout(request.app[SETTINGS].request_body_timeout_s):
                raw = await request.read()  # aiohttp answers 413 past client_max_size
    except TimeoutError:
        raise Refused(refusals.REQUEST_TIMEOUT) from None
    except RequestPayloadError:
        raise Refused(
            refusals.MALFORMED_JSON, "the body does not match its Content-Encoding"
        ) from None
    try:
        data = _DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKey as duplicate:
        raise Refused(
            refusals.VALIDATION_ERROR, f"{duplicate.name} is given twice", duplicate.name
        ) from None
    except (ValueError, RecursionError):  # includes UnicodeDecodeError and JSONDecodeError
        raise Refused(refusals.MALFORMED_JSON) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def refuse_unknown_query(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise Refused(
                refusals.VALIDATION_ERROR, f"{name} is not a parameter of this request", name
            )
    for name in allowed:
        if len(request.query.getall(name, [])) > 1:
            raise Refused(refusals.VALIDATION_ERROR, f"give {name} once", name)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not is_valid_idempotency_key(key):
        raise Refused(
            refusals.VALIDATION_ERROR,
            "Idempotency-Key must be 1 to 64 printable ASCII characters",
            "Idempotency-Key",
        )
    return key


def page_size(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # isascii(): str.isdigit() also accepts superscript and fullwidth digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3 or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise Refused(
            refusals.VALIDATION_ERROR,
            f"limit must be an integer from 1 to {MAX_PAGE_SIZE}",
            "limit",
        )
    return int(raw)


def cursor_position(request: web.Request) -> tuple[int, int] | None:
    """``(at_us, id)`` a page of history or of holds starts before: from ``?cursor=``."""
    cursor = request.query.get("cursor")
    return None if cursor is None else decode_time_cursor(cursor)


Choice = TypeVar("Choice", bound=str)


def query_choice(request: web.Request, name: str, choices: tuple[Choice, ...]) -> Choice | None:
    """``?name=`` when it is one of ``choices``; None when absent; else 422."""
    raw = request.query.get(name)
    if raw is None:
        return None
    for choice in choices:
        if raw == choice:
            return choice
    raise Refused(refusals.VALIDATION_ERROR, f"{name} must be one of " + ", ".join(choices), name)


def path_id(request: web.Request, missing: Refusal) -> int:
    """The id in the path (``{id}``): a positive integer of at most 15 digits, as ids are;
    anything else names nothing there can be, and is answered as ``missing``."""
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15 or int(raw) < 1:
        raise Refused(missing)
    return int(raw)
