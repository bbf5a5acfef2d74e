"""GET /api/balance/; POST and GET /api/balance/deposit/ and /api/balance/transfer/.

The money path of a transfer, in order: ``transfer`` here validates the body and resolves
the recipient; the domain (service/domain/) holds the limits and the refusals; one Lua
script (lua/transfer.lua, called through service/redis/money.py) checks the session and
the funds, moves the money and appends the transaction to the stream; the writer
(service/ledger/writer.py) stores it in the ledger.
"""

from aiohttp import web

from service.auth.sessions import SessionUser, current_user
from service.domain.amounts import CURRENCY, format_rubles
from service.domain.cursor import encode_time_cursor
from service.domain.transactions import Kind, transaction_json
from service.http.errors import json_response
from service.http.input import (
    cursor_position,
    page_size,
    query_choice,
    refuse_unknown_query,
)
from service.http.money_calls import (
    answer,
    counted,
    money_request,
    refuse_probing_by_name,
    resolve_recipient,
)
from service.http.schemas import DepositRequest, TransferRequest
from service.http.state import DATABASE, MONEY, REDIS, SETTINGS
from service.http.statements import balance_at_instant
from service.ledger.history import DIRECTIONS, Direction, read_history
from service.redis.money import Accepted


async def get_balance(request: web.Request) -> web.Response:
    """The balance now, with what pending holds keep; or, with ``?at=``, the posted balance
    at a past instant."""
    user = await current_user(request)
    refuse_unknown_query(request, {"at"})
    if "at" in request.query:
        return await balance_at_instant(request, user.user_id, request.query["at"])
    amounts = await request.app[MONEY].balance(user.user_id)
    available_kopecks = amounts.balance_kopecks - amounts.held_kopecks
    return json_response(
        {
            "user_id": user.user_id,
            "balance_kopecks": amounts.balance_kopecks,
            "balance": format_rubles(amounts.balance_kopecks),
            "held_kopecks": amounts.held_kopecks,
            "available_kopecks": available_kopecks,
            "available": format_rubles(available_kopecks),
            "currency": CURRENCY,
        }
    )


async def deposit(request: web.Request) -> web.Response:
    money = await money_request(request, DepositRequest)
    user_id, amount = money.user.user_id, money.body.amount
    move = request.app[MONEY].deposit(user_id, amount, money.idempotency_key, money.session)
    accepted = await counted(request, "deposit", move)
    return _created(accepted, "deposit", None, user_id, amount)


async def transfer(request: web.Request) -> web.Response:
    money = await money_request(request, TransferRequest)
    user_id, body = money.user.user_id, money.body
    await refuse_probing_by_name(request, user_id, money.idempotency_key, [body])
    to_user_id = await resolve_recipient(request, user_id, body)
    move = request.app[MONEY].transfer(
        user_id,
        to_user_id,
        body.amount,
        money.idempotency_key,
        money.session,
        to_username=body.to_username,
    )
    accepted = await counted(request, "transfer", move)
    assert to_user_id is not None  # the script accepts no transfer to no one
    return _created(accepted, "transfer", user_id, to_user_id, body.amount)


def _created(
    accepted: Accepted,
    kind: Kind,
    from_user_id: int | None,
    to_user_id: int,
    amount_kopecks: int,
) -> web.Response:
    body = transaction_json(
        txn_id=accepted.txn_id,
        kind=kind,
        from_user_id=from_user_id,
        to_user_id=to_user_id,
        amount_kopecks=amount_kopecks,
        created_at_us=accepted.created_at_us,
    )
    return answer(body, accepted.replayed)


async def _history(
    request: web.Request, user: SessionUser, direction: Direction | None
) -> web.Response:
    limit = page_size(request)
    before = cursor_position(request)
    page = await read_history(
        request.app[REDIS],
        request.app[DATABASE],
        user_id=user.user_id,
        kind="deposit" if direction is None else "transfer",
        direction=direction or "all",
        before=before,
        limit=limit,
        tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
    )
    items = [posting.as_json(with_direction=direction is not None) for posting in page.postings]
    next_cursor = encode_time_cursor(*page.last) if page.has_more else None
    return json_response({"items": items, "next_cursor": next_cursor})


async def deposit_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"limit", "cursor"})
    return await _history(request, user, None)


async def transfer_history(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"direction", "limit", "cursor"})
    direction = query_choice(request, "direction", DIRECTIONS) or "all"
    return await _history(request, user, direction)
