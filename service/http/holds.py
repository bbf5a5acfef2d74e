"""/api/holds/: create a hold (the payer), read and list them (either party), capture and
void them (the payee only). Each change is one Lua script (service/redis/holds.py), or a few
for a hold whose payee is in another bucket (service/redis/holds_across.py); reads merge the
ledger with what the writer has not stored yet (service/ledger/hold_reads.py). A hold lives
in its payer's bucket, which its id names (service/ledger/id_buckets.py)."""

import time
from collections.abc import Awaitable
from typing import Literal

from aiohttp import web

from service.auth.sessions import current_user
from service.domain import refusals
from service.domain.cursor import encode_time_cursor
from service.domain.holds import STATUSES, Hold
from service.domain.refusals import Refused
from service.domain.transactions import transaction_json
from service.http.errors import json_response
from service.http.input import (
    cursor_position,
    page_size,
    path_id,
    query_choice,
    refuse_unknown_query,
)
from service.http.money_calls import (
    Result,
    answer,
    counted,
    money_caller,
    money_request,
    refuse_probing_by_name,
    resolve_recipient,
)
from service.http.schemas import CaptureRequest, HoldRequest
from service.http.state import DATABASE, HOLDS, ID_BUCKETS, REDIS, SETTINGS
from service.ledger.hold_reads import list_holds, read_hold

ROLES: tuple[Literal["payer", "payee"], ...] = ("payer", "payee")


def _now_us() -> int:
    return time.time_ns() // 1000


async def _hold_bucket(request: web.Request, hold_id: int) -> int:
    """The bucket of the hold's payer, where the hold lives; 404 for an id no counter of
    this deployment issued."""
    bucket = await request.app[ID_BUCKETS].bucket_of_id(hold_id)
    if bucket is None:
        raise Refused(refusals.HOLD_NOT_FOUND)
    return bucket


async def _read_hold(request: web.Request, hold_id: int) -> Hold | None:
    return await read_hold(
        request.app[REDIS],
        request.app[DATABASE],
        hold_id,
        await _hold_bucket(request, hold_id),
        tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
    )


async def _not_found_or_ended(request: web.Request, hold_id: int, user_id: int) -> Refused:
    """What to answer when Redis no longer has the hold: it ended long ago (409, when the
    ledger has it and the caller is its payee) or there is none for the caller (404)."""
    hold = await _read_hold(request, hold_id)
    if hold is not None and hold.to_user_id == user_id:
        return Refused(refusals.HOLD_NOT_PENDING)
    return Refused(refusals.HOLD_NOT_FOUND)


async def create_hold(request: web.Request) -> web.Response:
    money = await money_request(request, HoldRequest)
    user_id, body = money.user.user_id, money.body
    await refuse_probing_by_name(request, user_id, money.idempotency_key, [body])
    to_user_id = await resolve_recipient(request, user_id, body)
    call = request.app[HOLDS].create(
        user_id,
        to_user_id,
        body.amount,
        body.expires_in_s,
        money.idempotency_key,
        money.session,
        to_username=body.to_username,
    )
    accepted = await counted(request, "hold", call)
    return answer(accepted.hold.as_json(_now_us()), accepted.replayed)


async def _acting_on_hold(
    request: web.Request, operation: str, hold_id: int, user_id: int, call: Awaitable[Result]
) -> Result:
    """A capture or void: a hold Redis no longer has is answered from the ledger."""
    try:
        return await counted(request, operation, call)
    except Refused as refused:
        if refused.refusal is refusals.HOLD_NOT_FOUND and not refused.replayed:
            raise await _not_found_or_ended(request, hold_id, user_id) from None
        raise


async def capture_hold(request: web.Request) -> web.Response:
    money = await money_request(request, CaptureRequest, body_optional=True)
    user_id, hold_id = money.user.user_id, path_id(request, refusals.HOLD_NOT_FOUND)
    bucket = await _hold_bucket(request, hold_id)
    call = request.app[HOLDS].capture(
        user_id, hold_id, money.body.amount, money.idempotency_key, money.session, bucket
    )
    captured = await _acting_on_hold(request, "capture", hold_id, user_id, call)
    body_out = transaction_json(
        txn_id=captured.txn_id,
        kind="transfer",
        from_user_id=captured.from_user_id,
        to_user_id=captured.to_user_id,
        amount_kopecks=captured.amount_kopecks,
        created_at_us=captured.created_at_us,
        hold_id=captured.hold_id,
    )
    return answer(body_out, captured.replayed)


async def void_hold(request: web.Request) -> web.Response:
    """The body, if any, is not read: the contract's void takes none."""
    user, session, key = await money_caller(request)
    hold_id = path_id(request, refusals.HOLD_NOT_FOUND)
    bucket = await _hold_bucket(request, hold_id)
    call = request.app[HOLDS].void(user.user_id, hold_id, key, session, bucket)
    voided = await _acting_on_hold(request, "void", hold_id, user.user_id, call)
    return answer(voided.hold.as_json(_now_us()), voided.replayed, status=200)


async def get_hold(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, set())
    hold = await _read_hold(request, path_id(request, refusals.HOLD_NOT_FOUND))
    if hold is None or user.user_id not in (hold.from_user_id, hold.to_user_id):
        raise Refused(refusals.HOLD_NOT_FOUND)
    return json_response(hold.as_json(_now_us()))


async def list_my_holds(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"status", "role", "limit", "cursor"})
    status = query_choice(request, "status", STATUSES)
    role = query_choice(request, "role", ROLES)
    limit = page_size(request)
    now_us = _now_us()
    page = await list_holds(
        request.app[REDIS],
        request.app[DATABASE],
        user_id=user.user_id,
        status=status,
        role=role,
        before=cursor_position(request),
        limit=limit,
        now_us=now_us,
        tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
    )
    items = [hold.as_json(now_us) for hold in page.holds]
    next_cursor = None
    if page.has_more:
        last = page.holds[-1]
        next_cursor = encode_time_cursor(last.created_at_us, last.hold_id)
    return json_response({"items": items, "next_cursor": next_cursor})
