"""POST /api/balance/transfer/{id}/refund/: the recipient of a transfer sends all or part
of it back, never more than it in total (lua/refund.lua through service/redis/refunds.py).
The transfer's facts are read from the ledger merged with what the writer has not stored
yet; the refunded total lives in Redis, and only the scripts change it (refund.lua raises it;
across buckets, the void of a refund that never reached its payer lowers it again)."""

from aiohttp import web

from service.domain import refusals
from service.domain.transactions import transaction_json
from service.http.input import path_id
from service.http.money_calls import answer, counted, money_request
from service.http.schemas import RefundRequest
from service.http.state import DATABASE, REDIS, REFUNDS, SETTINGS
from service.ledger.lookup import find_transaction


async def refund(request: web.Request) -> web.Response:
    money = await money_request(request, RefundRequest, body_optional=True)
    user, key, session = money.user, money.idempotency_key, money.session
    txn_id = path_id(request, refusals.TRANSACTION_NOT_FOUND)
    transfer = await find_transaction(
        request.app[REDIS],
        request.app[DATABASE],
        user.user_id,
        txn_id,
        tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
    )
    call = request.app[REFUNDS].refund(
        user.user_id, txn_id, transfer, money.body.amount, key, session
    )
    refunded = await counted(request, "refund", call)
    body_out = transaction_json(
        txn_id=refunded.txn_id,
        kind="refund",
        from_user_id=user.user_id,
        to_user_id=refunded.to_user_id,
        amount_kopecks=refunded.amount_kopecks,
        created_at_us=refunded.created_at_us,
        refund_of=txn_id,
    )
    return answer(body_out, refunded.replayed)
