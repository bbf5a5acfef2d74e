"""What every money endpoint does around its script call: count the result, answer 201
with the replay header, resolve a recipient named by username, and refuse a user who keeps
naming recipients that do not exist (probing for ids or names)."""

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel

from persistence.users import find_user
from service.auth.sessions import SessionUser, money_session
from service.domain import refusals
from service.domain.refusals import Refused
from service.http.errors import REPLAYED_HEADER, json_response
from service.http.input import idempotency_key, read_body, refuse_unknown_query
from service.http.metrics import MONEY_OPERATIONS
from service.http.schemas import Recipient
from service.http.state import DATABASE, RECIPIENT_MISS_LIMIT, REDIS, SESSIONS
from service.redis import keyspace
from service.redis.money import SessionCheck

Result = TypeVar("Result")
Body = TypeVar("Body", bound=BaseModel)


async def counted(request: web.Request, operation: str, call: Awaitable[Result]) -> Result:
    """Awaits one money script call and counts its result (``replayed`` when the result has
    it set). A session the script found gone is forgotten by this process's cache: the
    client logs in again."""
    try:
        result = await call
    except Refused as refused:
        if refused.refusal is refusals.SESSION_ENDED:
            sessions = request.app[SESSIONS]
            sessions.forget(sessions.load_cookie(request) or "")
        else:
            MONEY_OPERATIONS.labels(operation, refused.code).inc()
        raise
    replayed = getattr(result, "replayed", False)
    MONEY_OPERATIONS.labels(operation, "replayed" if replayed else "ok").inc()
    return result


def answer(body: object, replayed: bool, status: int = 201) -> web.Response:
    response = json_response(body, status=status)
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


@dataclass(frozen=True, slots=True)
class MoneyRequest(Generic[Body]):
    user: SessionUser
    session: SessionCheck
    idempotency_key: str | None
    body: Body


async def money_caller(request: web.Request) -> tuple[SessionUser, SessionCheck, str | None]:
    """What every money endpoint reads first, in this order: the session (401 before
    anything else), no query string, the Idempotency-Key."""
    user, session = await money_session(request, request.app[SESSIONS])
    refuse_unknown_query(request, set())
    return user, session, idempotency_key(request)


async def money_request(
    request: web.Request, model: type[Body], *, body_optional: bool = False
) -> MoneyRequest[Body]:
    """``money_caller``, then the body (with ``body_optional``, a request without one is
    read as ``{}``)."""
    user, session, key = await money_caller(request)
    if body_optional and not request.body_exists:
        body = model()
    else:
        body = await read_body(request, model)
    return MoneyRequest(user, session, key, body)


async def _is_a_retry(request: web.Request, user_id: int, key: str | None) -> bool:
    """Whether a request with this Idempotency-Key was answered before (its answer is
    replayed)."""
    return key is not None and bool(
        await request.app[REDIS].exists(keyspace.idempotency(user_id, key))
    )


async def refuse_probing_by_name(
    request: web.Request, user_id: int, key: str | None, recipients: Sequence[Recipient]
) -> None:
    """Before the usernames a payment names are looked up in PostgreSQL. A user whose
    payments keep naming no one is probing for ids or names: the payment scripts count each
    first answer of recipient_not_found and, past the limit, refuse the user's payments for
    a while, whatever the recipient (lua/includes/recipient_misses.lua). A refused user's
    payments by name are refused here already, so that they cost the database nothing. A
    retry is still answered as before: it tells nothing new, and its first try may have
    moved money."""
    if all(recipient.to_username is None for recipient in recipients):
        return
    misses_key = keyspace.recipient_misses_of_user(user_id)
    retry_after_s = await request.app[RECIPIENT_MISS_LIMIT].retry_after_s(misses_key)
    if retry_after_s is not None and not await _is_a_retry(request, user_id, key):
        raise Refused(refusals.TOO_MANY_UNKNOWN_RECIPIENTS, retry_after_s=retry_after_s)


async def resolve_recipient(
    request: web.Request, user_id: int, recipient: Recipient, field_prefix: str = ""
) -> int | None:
    """The recipient's user id; None for a username that resolves to no one. That goes to
    the script all the same: it refuses the payment and records the refusal under the
    Idempotency-Key, so that a retry after someone registers the name is answered 404
    again, not paid. Paying oneself is refused here (422 self_transfer)."""
    to_user_id = recipient.to_user_id
    if recipient.to_username is not None:
        found = await find_user(request.app[DATABASE], recipient.to_username)
        to_user_id = None if found is None else found.id
    if to_user_id == user_id:
        named = "to_user_id" if recipient.to_username is None else "to_username"
        raise Refused(refusals.SELF_TRANSFER, field=field_prefix + named)
    return to_user_id
