"""GET /api/balance/; POST and GET /api/balance/deposit/ and /api/balance/transfer/.

The money path of a transfer, in order: ``transfer`` here validates the body and resolves
the recipient; the domain (service/domain/) holds the limits and the refusals; one Lua
script (lua/transfer.lua, called through service/redis/money.py) checks the session and
the funds, moves the money and appends the transaction to the stream; the writer
(service/ledger/writer.py) stores it in the ledger.
"""

from collections.abc import Awaitable

from aiohttp import web

from persistence.users import find_user
from service.auth.sessions import SessionUser, current_user, money_session
from service.domain import refusals
from service.domain.amounts import CURRENCY, format_rubles
from service.domain.cursor import decode_cursor, encode_cursor
from service.domain.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from service.domain.refusals import Refused
from service.domain.transactions import transaction_json
from service.http.errors import REPLAYED_HEADER, json_response
from service.http.input import idempotency_key, read_body, refuse_unknown_query
from service.http.metrics import MONEY_OPERATIONS
from service.http.schemas import DepositRequest, TransferRequest
from service.http.state import DATABASE, MONEY, RECIPIENT_MISS_LIMIT, REDIS, SESSIONS, SETTINGS
from service.ledger.history import Direction, HistoryUnavailable, read_history
from service.redis import keyspace
from service.redis.money import Accepted


async def _counted(request: web.Request, operation: str, move: Awaitable[Accepted]) -> Accepted:
    """Awaits one money script call and counts its result. A session the script found
    gone is forgotten by this process's cache: the client logs in again."""
    try:
        accepted = await move
    except Refused as refused:
        if refused.refusal is refusals.SESSION_ENDED:
            sessions = request.app[SESSIONS]
            sessions.forget(sessions.load_cookie(request) or "")
        else:
            MONEY_OPERATIONS.labels(operation, refused.code).inc()
        raise
    MONEY_OPERATIONS.labels(operation, "replayed" if accepted.replayed else "ok").inc()
    return accepted


def _created(
    accepted: Accepted, from_user_id: int | None, to_user_id: int, amount_kopecks: int
) -> web.Response:
    body = transaction_json(
        txn_id=accepted.txn_id,
        kind="deposit" if from_user_id is None else "transfer",
        from_user_id=from_user_id,
        to_user_id=to_user_id,
        amount_kopecks=amount_kopecks,
        created_at_us=accepted.created_at_us,
    )
    response = json_response(body, status=201)
    if accepted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


async def get_balance(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, set())
    raw = await request.app[REDIS].hget(keyspace.user(user.user_id), "balance_kopecks")
    if raw is None:
        raise Refused(refusals.ACCOUNT_NOT_FOUND)
    balance_kopecks = int(raw)
    return json_response(
        {
            "user_id": user.user_id,
            "balance_kopecks": balance_kopecks,
            "balance": format_rubles(balance_kopecks),
            "currency": CURRENCY,
        }
    )


async def deposit(request: web.Request) -> web.Response:
    user, session = await money_session(request, request.app[SESSIONS])
    refuse_unknown_query(request, set())
    key = idempotency_key(request)
    body = await read_body(request, DepositRequest)
    move = request.app[MONEY].deposit(user.user_id, body.amount, key, session)
    accepted = await _counted(request, "deposit", move)
    return _created(accepted, None, user.user_id, body.amount)


async def _is_a_retry(request: web.Request, user_id: int, key: str | None) -> bool:
    """Whether a request with this Idempotency-Key was answered before (its answer is
    replayed)."""
    return key is not None and bool(
        await request.app[REDIS].exists(keyspace.idempotency(user_id, key))
    )


async def transfer(request: web.Request) -> web.Response:
    user, session = await money_session(request, request.app[SESSIONS])
    refuse_unknown_query(request, set())
    key = idempotency_key(request)
    body = await read_body(request, TransferRequest)
    # A user whose transfers keep naming no one is probing for ids or names: refused for a
    # while, whatever the recipient, so that 404 and 409 tell nothing apart. A retry is
    # still answered as before: it tells nothing new, and its first try may have moved money.
    misses = request.app[RECIPIENT_MISS_LIMIT]
    misses_key = keyspace.recipient_misses_of_user(user.user_id)
    retry_after_s = await misses.retry_after_s(misses_key)
    if retry_after_s is not None and not await _is_a_retry(request, user.user_id, key):
        raise Refused(refusals.TOO_MANY_UNKNOWN_RECIPIENTS, retry_after_s=retry_after_s)
    try:
        to_user_id = body.to_user_id
        if body.to_username is not None:
            recipient = await find_user(request.app[DATABASE], body.to_username)
            # No such name goes to the script all the same (to_user_id None): it refuses
            # the transfer and records the refusal under the Idempotency-Key, so that a
            # retry after someone registers the name is answered 404 again, not paid.
            to_user_id = None if recipient is None else recipient.id
        if to_user_id == user.user_id:
            raise Refused(refusals.SELF_TRANSFER)
        move = request.app[MONEY].transfer(
            user.user_id, to_user_id, body.amount, key, session, to_username=body.to_username
        )
        accepted = await _counted(request, "transfer", move)
    except Refused as refused:
        if refused.refusal is refusals.RECIPIENT_NOT_FOUND and not refused.replayed:
            await misses.count_unless_reached(misses_key)
        raise
    assert to_user_id is not None  # the script accepts no transfer to no one
    return _created(accepted, user.user_id, to_user_id, body.amount)


def _page_size(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # isascii(): str.isdigit() also accepts superscript and fullwidth digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3 or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise Refused(refusals.VALIDATION_ERROR, f"an integer from 1 to {MAX_PAGE_SIZE}", "limit")
    return int(raw)


async def _history(
    request: web.Request, user: SessionUser, direction: Direction | None
) -> web.Response:
    limit = _page_size(request)
    cursor = request.query.get("cursor")
    before_id = None if cursor is None else decode_cursor(cursor)
    try:
        page = await read_history(
            request.app[REDIS],
            request.app[DATABASE],
            user_id=user.user_id,
            kind="deposit" if direction is None else "transfer",
            direction=direction or "all",
            before_id=before_id,
            limit=limit,
            tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
        )
    except HistoryUnavailable:
        raise Refused(refusals.HISTORY_UNAVAILABLE) from None
    items = [
        txn.as_json(user.user_id, with_direction=direction is not None) for txn in page.transactions
    ]
    next_cursor = encode_cursor(page.transactions[-1].txn_id) if page.has_more else None
    return json_response({"items": items, "next_cursor": next_cursor})


async def deposit_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"limit", "cursor"})
    return await _history(request, user, None)


async def transfer_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"direction", "limit", "cursor"})
    direction = request.query.get("direction", "all")
    if direction not in ("all", "in", "out"):
        raise Refused(refusals.VALIDATION_ERROR, "one of all, in, out", "direction")
    return await _history(request, user, direction)  # type: ignore[arg-type]
