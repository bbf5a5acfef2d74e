"""GET /api/balance/?at= (the posted balance at a past instant) and GET
/api/balance/statement/ (a period's transactions with the running balance, JSON or CSV).
Both read the ledger merged with what the writer has not stored yet (read-your-writes)."""

import csv
import io
from datetime import timedelta

from aiohttp import web

from service.auth.sessions import current_user
from service.domain import refusals
from service.domain.amounts import CURRENCY, format_rubles
from service.domain.limits import MAX_STATEMENT_DAYS, MAX_STATEMENT_ITEMS
from service.domain.refusals import Refused
from service.domain.times import datetime_from_us, parse_rfc3339, rfc3339, us_from_datetime
from service.http.errors import json_response
from service.http.input import query_choice, refuse_unknown_query
from service.http.state import DATABASE, REDIS, SETTINGS
from service.ledger.statements import StatementTooLarge, balance_at, read_statement

# A query string turns "+" into a space: an offset such as +03:00 must be sent as %2B03:00.
_INSTANT_HINT = "an RFC 3339 instant with a time zone, such as 2026-12-01T00:00:00Z (send + as %2B)"
CSV_COLUMNS = (
    "id",
    "created_at",
    "kind",
    "direction",
    "amount",
    "amount_rub",
    "from_user_id",
    "to_user_id",
    "balance_after_kopecks",
    "balance_after",
    "hold_id",
    "refund_of",
    "reversal_of",
)


def _instant_us(raw: str, field: str) -> int:
    try:
        return us_from_datetime(parse_rfc3339(raw))
    except (ValueError, OverflowError):
        raise Refused(
            refusals.VALIDATION_ERROR, f"{field} must be {_INSTANT_HINT}", field
        ) from None


async def balance_at_instant(request: web.Request, user_id: int, raw_at: str) -> web.Response:
    at_us = _instant_us(raw_at, "at")
    balance_kopecks = await balance_at(
        request.app[REDIS],
        request.app[DATABASE],
        user_id=user_id,
        at_us=at_us,
        tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
    )
    return json_response(
        {
            "user_id": user_id,
            "at": rfc3339(datetime_from_us(at_us)),
            "balance_kopecks": balance_kopecks,
            "balance": format_rubles(balance_kopecks),
            "currency": CURRENCY,
        }
    )


def _period(request: web.Request) -> tuple[int, int]:
    bounds = []
    for name in ("from", "to"):
        raw = request.query.get(name)
        if raw is None:
            raise Refused(refusals.VALIDATION_ERROR, f"{name} is required: {_INSTANT_HINT}", name)
        bounds.append(_instant_us(raw, name))
    from_us, to_us = bounds
    if to_us < from_us:
        raise Refused(refusals.VALIDATION_ERROR, "to must not be earlier than from", "to")
    if to_us - from_us > timedelta(days=MAX_STATEMENT_DAYS) // timedelta(microseconds=1):
        raise Refused(
            refusals.VALIDATION_ERROR,
            f"to must be at most {MAX_STATEMENT_DAYS} days after from",
            "to",
        )
    return from_us, to_us


def _csv(items: list[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=CSV_COLUMNS, extrasaction="raise", lineterminator="\r\n"
    )
    writer.writeheader()
    for item in items:
        writer.writerow({column: item.get(column) for column in CSV_COLUMNS})
    return out.getvalue()


async def statement(request: web.Request) -> web.Response:
    user = await current_user(request)
    refuse_unknown_query(request, {"from", "to", "format"})
    output = query_choice(request, "format", ("json", "csv")) or "json"
    from_us, to_us = _period(request)
    try:
        found = await read_statement(
            request.app[REDIS],
            request.app[DATABASE],
            user_id=user.user_id,
            from_us=from_us,
            to_us=to_us,
            max_items=MAX_STATEMENT_ITEMS,
            tail_max_entries=request.app[SETTINGS].history_tail_max_entries,
        )
    except StatementTooLarge:
        raise Refused(refusals.STATEMENT_TOO_LARGE, field="to") from None
    items = [posting.as_json(with_direction=True) for posting in found.postings]
    if output == "csv":
        return web.Response(
            text=_csv(items),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="statement.csv"'},
        )
    return json_response(
        {
            "user_id": user.user_id,
            "from": rfc3339(datetime_from_us(from_us)),
            "to": rfc3339(datetime_from_us(to_us)),
            "opening_balance_kopecks": found.opening_balance_kopecks,
            "closing_balance_kopecks": found.closing_balance_kopecks,
            "items": items,
        }
    )
