"""POST /api/balance/transfer/batch/: one payer, 1..100 legs, all or nothing, in one Lua
script (lua/transfer_batch.lua through service/redis/batches.py)."""

from aiohttp import web

from service.domain.transactions import transaction_json
from service.http.money_calls import (
    answer,
    counted,
    money_request,
    refuse_probing_by_name,
    resolve_recipient,
)
from service.http.schemas import BatchRequest
from service.http.state import BATCHES
from service.redis.batches import Leg


async def transfer_batch(request: web.Request) -> web.Response:
    money = await money_request(request, BatchRequest)
    user_id = money.user.user_id
    await refuse_probing_by_name(request, user_id, money.idempotency_key, money.body.transfers)
    legs = [
        Leg(
            to_user_id=await resolve_recipient(
                request, user_id, leg, field_prefix=f"transfers[{i}]."
            ),
            amount_kopecks=leg.amount,
            to_username=leg.to_username,
        )
        for i, leg in enumerate(money.body.transfers)
    ]
    call = request.app[BATCHES].transfer_batch(user_id, legs, money.idempotency_key, money.session)
    accepted = await counted(request, "batch", call)
    items = []
    for i, leg in enumerate(legs):
        assert leg.to_user_id is not None  # the script accepts no leg to no one
        items.append(
            transaction_json(
                txn_id=accepted.first_txn_id + i,
                kind="transfer",
                from_user_id=user_id,
                to_user_id=leg.to_user_id,
                amount_kopecks=leg.amount_kopecks,
                created_at_us=accepted.created_at_us,
            )
        )
    return answer({"items": items}, accepted.replayed)
