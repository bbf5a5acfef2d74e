"""POST /api/balance/transfer/batch/: one payer, 1..100 legs, all or nothing, in one Lua
script (lua/transfer_batch.lua through service/redis/batches.py)."""

from aiohttp import web

from service.auth.sessions import money_session
from service.domain.refusals import Refused
from service.domain.transactions import transaction_json
from service.http.input import idempotency_key, read_body, refuse_unknown_query
from service.http.money_calls import (
    answer,
    count_recipient_miss,
    counted,
    refuse_probing,
    resolve_recipient,
)
from service.http.schemas import BatchRequest
from service.http.state import BATCHES, SESSIONS
from service.redis.batches import Leg


async def transfer_batch(request: web.Request) -> web.Response:
    user, session = await money_session(request, request.app[SESSIONS])
    refuse_unknown_query(request, set())
    key = idempotency_key(request)
    body = await read_body(request, BatchRequest)
    await refuse_probing(request, user.user_id, key)
    try:
        legs = [
            Leg(
                to_user_id=await resolve_recipient(
                    request, user.user_id, leg, field_prefix=f"transfers[{i}]."
                ),
                amount_kopecks=leg.amount,
                to_username=leg.to_username,
            )
            for i, leg in enumerate(body.transfers)
        ]
        call = request.app[BATCHES].transfer_batch(user.user_id, legs, key, session)
        accepted = await counted(request, "batch", call)
    except Refused as refused:
        await count_recipient_miss(request, user.user_id, refused)
        raise
    items = []
    for i, leg in enumerate(legs):
        assert leg.to_user_id is not None  # the script accepts no leg to no one
        items.append(
            transaction_json(
                txn_id=accepted.first_txn_id + i,
                kind="transfer",
                from_user_id=user.user_id,
                to_user_id=leg.to_user_id,
                amount_kopecks=leg.amount_kopecks,
                created_at_us=accepted.created_at_us,
            )
        )
    return answer({"items": items}, accepted.replayed)
