"""GET /api/balance/; POST and GET /api/balance/deposit/ and /api/balance/transfer/."""

from collections.abc import Awaitable
from datetime import UTC, datetime

from aiohttp import web
from redis.asyncio import Redis

from persistence.history import Direction, HistoryUnavailable, read_history
from persistence.users import find_user
from service import money, redis_keys
from service.amounts import CURRENCY, format_rubles
from service.cursor import decode_cursor, encode_cursor
from service.errors import ApiError, json_response
from service.http_input import idempotency_key, read_body, refuse_unknown_query
from service.metrics import MONEY_OPERATIONS
from service.schemas import DepositRequest, TransferRequest
from service.sessions import SessionUser, WalletSessionStorage, current_user, money_session
from service.state import DATABASE, MONEY, REDIS, SESSIONS, SETTINGS

routes = web.RouteTableDef()

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

_REFUSAL_STATUS: dict[type[money.Refused], tuple[int, str]] = {
    money.RecipientNotFound: (404, "no such recipient"),
    money.InsufficientFunds: (409, "the balance is smaller than the amount"),
    money.BalanceLimitExceeded: (422, "the balance would exceed 10^15 kopecks"),
    money.SelfTransfer: (422, "a transfer to oneself is not allowed"),
    money.IdempotencyKeyReused: (422, "this Idempotency-Key was used with another request"),
    money.AccountNotFound: (503, "the wallet is being restored; try again later"),
    money.NotRebuilt: (503, "balances are being restored; try again later"),
}


def _refusal_error(refused: money.Refused) -> ApiError:
    status, message = _REFUSAL_STATUS[type(refused)]
    unavailable = isinstance(refused, money.AccountNotFound | money.NotRebuilt)
    code = "wallet_unavailable" if unavailable else refused.code
    return ApiError(status, code, message)


def _unauthorized(request: web.Request, sessions: WalletSessionStorage) -> ApiError:
    """The script found the session gone: forget the cached user; the client logs in again."""
    sessions.forget(sessions.load_cookie(request) or "")
    return ApiError(401, "unauthorized", "the session ended; log in again")


async def _counted(
    request: web.Request,
    sessions: WalletSessionStorage,
    operation: str,
    move: Awaitable[money.Accepted],
) -> money.Accepted:
    """Awaits one money script call, counts its result, and turns a refusal into the
    contract's error."""
    try:
        accepted = await move
    except money.Unauthorized:
        raise _unauthorized(request, sessions) from None
    except money.Refused as refused:
        MONEY_OPERATIONS.labels(operation, refused.code).inc()
        raise _refusal_error(refused) from None
    MONEY_OPERATIONS.labels(operation, "replayed" if accepted.replayed else "ok").inc()
    return accepted


def transaction_json(
    *,
    txn_id: int,
    from_user_id: int | None,
    to_user_id: int,
    amount_kopecks: int,
    created_at_us: int,
    direction: str | None = None,
) -> dict[str, object]:
    """The contract's transaction object; ``direction`` only in transfer history."""
    seconds, micros = divmod(created_at_us, 1_000_000)
    created_at = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    body: dict[str, object] = {
        "id": txn_id,
        "kind": "deposit" if from_user_id is None else "transfer",
        "amount": amount_kopecks,
        "amount_rub": format_rubles(amount_kopecks),
        "from_user_id": from_user_id,
        "to_user_id": to_user_id,
        "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    if direction is not None:
        body["direction"] = direction
    return body


def _accepted_response(
    accepted: money.Accepted, from_user_id: int | None, to_user_id: int, amount_kopecks: int
) -> web.Response:
    body = transaction_json(
        txn_id=accepted.txn_id,
        from_user_id=from_user_id,
        to_user_id=to_user_id,
        amount_kopecks=amount_kopecks,
        created_at_us=accepted.created_at_us,
    )
    return json_response(body, status=201)


@routes.get("/api/balance/")
async def get_balance(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, set())
    redis: Redis = request.app[REDIS]
    raw = await redis.hget(redis_keys.user(user.user_id), "balance_kopecks")
    if raw is None:
        raise _refusal_error(money.AccountNotFound())
    balance_kopecks = int(raw)
    return json_response(
        {
            "user_id": user.user_id,
            "balance_kopecks": balance_kopecks,
            "balance": format_rubles(balance_kopecks),
            "currency": CURRENCY,
        }
    )


@routes.post("/api/balance/deposit/")
async def deposit(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    user, session = await money_session(request, sessions)
    refuse_unknown_query(request, set())
    key = idempotency_key(request)
    body = await read_body(request, DepositRequest)
    move = request.app[MONEY].deposit(user.user_id, body.amount, key, session)
    accepted = await _counted(request, sessions, "deposit", move)
    return _accepted_response(accepted, None, user.user_id, body.amount)


@routes.post("/api/balance/transfer/")
async def transfer(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    user, session = await money_session(request, sessions)
    refuse_unknown_query(request, set())
    key = idempotency_key(request)
    body = await read_body(request, TransferRequest)
    to_user_id = body.to_user_id
    if body.to_username is not None:
        recipient = await find_user(request.app[DATABASE], body.to_username)
        if recipient is None:
            raise _refusal_error(money.RecipientNotFound())
        to_user_id = recipient.id
    assert to_user_id is not None  # the model requires exactly one recipient
    if to_user_id == user.user_id:
        raise _refusal_error(money.SelfTransfer())
    move = request.app[MONEY].transfer(user.user_id, to_user_id, body.amount, key, session)
    accepted = await _counted(request, sessions, "transfer", move)
    return _accepted_response(accepted, user.user_id, to_user_id, body.amount)


def _page_size(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # isascii(): str.isdigit() also accepts superscript and fullwidth digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3:
        raise ApiError(422, "validation_error", f"an integer from 1 to {MAX_PAGE_SIZE}", "limit")
    if not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ApiError(422, "validation_error", f"an integer from 1 to {MAX_PAGE_SIZE}", "limit")
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
        raise ApiError(
            503, "history_unavailable", "the ledger is catching up; try again shortly"
        ) from None
    items = [
        transaction_json(
            txn_id=txn.txn_id,
            from_user_id=txn.from_user_id,
            to_user_id=txn.to_user_id,
            amount_kopecks=txn.amount_kopecks,
            created_at_us=txn.created_at_us,
            direction=None
            if direction is None
            else ("out" if txn.from_user_id == user.user_id else "in"),
        )
        for txn in page.transactions
    ]
    next_cursor = encode_cursor(page.transactions[-1].txn_id) if page.has_more else None
    return json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/api/balance/deposit/")
async def deposit_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"limit", "cursor"})
    return await _history(request, user, None)


@routes.get("/api/balance/transfer/")
async def transfer_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"direction", "limit", "cursor"})
    direction = request.query.get("direction", "all")
    if direction not in ("all", "in", "out"):
        raise ApiError(422, "validation_error", "one of all, in, out", "direction")
    return await _history(request, user, direction)  # type: ignore[arg-type]
