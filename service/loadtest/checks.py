"""The checks of ``wallet loadtest``, once the load has stopped.

Over HTTP: every user's balance (GET /api/balance/). Their sum must equal the sum of the
acknowledged deposits (funding included; transfers, captures and refunds only move money
between the tool's users), none may be negative, and each must equal what the user's own
acknowledged operations add up to (holds move no posted money). ``held_kopecks`` must be
the sum of the user's holds the tool knows pending and not expired (a hold that may have
expired during the reads counts either way), ``0 <= held <= balance`` and ``available =
balance - held``. This is exact because only the tool moves its users.

With the Redis and database URLs: once the writer has stored every acknowledged
transaction and hold event (waited for up to ``writer_wait_s``), ``service.ledger.reconcile``
must be clean, and the ledger rows that touch the tool's users must be exactly the
acknowledged transactions: every acknowledged id once, no other id, each with its kind,
``hold_id`` (a capture) and ``refund_of`` (a refund) as acknowledged (a transfer across
buckets by its reservation, once its credit is stored), and per user the same
deposits, transfers in and out (sums and count) as the 201 bodies said; no transfer's
refunds add up to more than it; ``holds`` has every acknowledged hold and no other of the
tool's users (per payer the same count and sum), and ``hold_events`` has each
acknowledged capture (with its transaction) and void, and no other end but an expiry of a
hold that may have expired.
"""

import asyncio
import time
from typing import Any

from sqlalchemy import String, case, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from persistence.db import connect_database
from persistence.models import LedgerHold as H
from persistence.models import LedgerHoldEvent as E
from persistence.models import LedgerTransaction as T
from persistence.models import LedgerTransferCredit as C
from persistence.models import LedgerTransferReservation as R
from service.domain.crossings import CrossingRecord
from service.domain.holds import HoldEvent
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.transactions import Transaction
from service.ledger.bucket_count import check_bucket_count
from service.ledger.reconcile import format_report, reconcile
from service.loadtest.driver import (
    CHECK_CONCURRENCY,
    Driver,
    Recorder,
    Totals,
    balance_problem,
    book,
    bounded_map,
)
from service.loadtest.known import HoldTotals, held_bounds
from service.loadtest.stats import IdSet
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.stream_tail import Tail, unpersisted_tail
from service.settings import Settings

PAGE = 10_000
USER_CHUNK = 1_000
_SHOWN = 5
_POLL_S = 0.1


# The ledger's transactions: the rows of ``transactions``, and the transfers (and refunds)
# across buckets whose credit the ledger holds, by their reservation's id (docs/scaling.md,
# "In the ledger"; one voided has no credit: it moved nothing).
_CROSSING = select(
    R.id,
    case(
        (R.refund_of.is_(None), literal("transfer", String)), else_=literal("refund", String)
    ).label("kind"),
    R.from_user_id,
    R.to_user_id,
    C.amount_kopecks,
    R.hold_id,
    R.refund_of,
    R.amount_kopecks.label("reserved_kopecks"),
).join(C, C.transfer_id == R.id)
# reserved_kopecks: what the payer gave (across buckets, the reservation's amount), which
# must be what the payee got.
M = union_all(
    select(
        T.id,
        T.kind,
        T.from_user_id,
        T.to_user_id,
        T.amount_kopecks,
        T.hold_id,
        T.refund_of,
        T.amount_kopecks.label("reserved_kopecks"),
    ),
    _CROSSING,
).subquery("money")


def _listed(items: list[Any]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(map(str, items[:_SHOWN])) + more


async def check_balances(driver: Driver, violations: list[str]) -> dict[str, Any]:
    users, rec = driver.users, driver.rec
    sent = time.time()
    replies = await bounded_map(
        min(driver.config.concurrency, CHECK_CONCURRENCY),
        lambda user: driver.call("check balance", "GET", "/api/balance/", user),
        users,
    )
    bounds = held_bounds(rec.pending, rec.doubtful, sent, time.time())
    observed: dict[int, int] = {}
    held: dict[int, int] = {}
    inconsistent: list[str] = []
    for user, reply in zip(users, replies, strict=True):
        problem = balance_problem(reply.body) if reply and reply.status == 200 else "?"
        if reply is None or problem == "?" or problem.startswith("a balance without"):
            violations.append(f"could not read the balance of user {user.id}")
            continue
        observed[user.id] = int(reply.body["balance_kopecks"])
        held[user.id] = int(reply.body["held_kopecks"])
        if problem:
            inconsistent.append(f"user {user.id}: {problem}")
    total = sum(observed.values())
    negative = sorted(u for u, b in observed.items() if b < 0)
    wrong = [
        f"user {u}: 201s say {rec.totals[u].balance}, service says {b}"
        for u, b in sorted(observed.items())
        if b != rec.totals[u].balance
    ]
    wrong_held = []
    for u, h in sorted(held.items()):
        low, high = bounds.get(u, (0, 0))
        high += rec.doubtful_held[u]
        if not low <= h <= high:
            known = f"{low}" if low == high else f"{low}..{high}"
            wrong_held.append(f"user {u}: the holds known pending say {known}, service says {h}")
    if rec.unknown_outcomes:
        violations.append(
            f"{rec.unknown_outcomes} POSTs got no answer, their outcome is unknown: the money"
            " checks are inconclusive (--idempotency-keys settles such outcomes)"
        )
    if len(observed) == len(users) and total != rec.deposits:
        violations.append(f"sum of balances {total} != acknowledged deposits {rec.deposits}")
    if negative:
        violations.append(f"{len(negative)} negative balances: users {_listed(negative)}")
    if wrong:
        violations.append(f"{len(wrong)} balances differ from the 201s: {_listed(wrong)}")
    if wrong_held:
        violations.append(
            f"{len(wrong_held)} held amounts differ from the holds: {_listed(wrong_held)}"
        )
    if inconsistent:
        violations.append(f"{len(inconsistent)} balances inconsistent: {_listed(inconsistent)}")
    return {
        "users": len(users),
        "sum_balances_kopecks": total,
        "sum_acknowledged_deposits_kopecks": rec.deposits,
        "sum_held_kopecks": sum(held.values()),
        "negative_balances": len(negative),
        "balances_not_as_acknowledged": len(wrong),
        "held_not_as_acknowledged": len(wrong_held),
        "held_or_available_inconsistent": len(inconsistent),
        "unknown_outcomes": rec.unknown_outcomes,
    }


def hold_figures(rec: Recorder) -> dict[str, int]:
    """What the tool's acknowledged holds, batches and refunds came to."""
    now = time.time()
    pending = [h for h in rec.pending if h.open and not h.expired_from(now)]
    return {
        "holds": len(rec.holds),
        "captured": len(rec.captures),
        "voided": len(rec.voided),
        "expired_seen": len(rec.expired) + len(rec.pending) - len(pending),
        "pending_known": len(pending),
        "pending_known_kopecks": sum(h.amount for h in pending),
        "batches": rec.batches,
        "batch_legs": rec.batch_legs,
        "refunds": len(rec.refunds),
        "refunded_kopecks": rec.refunded_kopecks,
    }


def _caught_up(tail: Tail, rec: Recorder) -> bool:
    """True once the writer's unpersisted tail starts after every id of its epoch the tool
    knows (a record with no id of its own first in the tail: a void or an expiry of a hold,
    the credit or the end of a transfer across buckets: not yet)."""
    if tail.empty:
        return True
    first = tail.records[0] if tail.records else None
    own_id = None
    if isinstance(first, Transaction):
        own_id = first.txn_id
    elif isinstance(first, HoldEvent) and first.kind == "hold_created":
        own_id = first.hold_id
    elif isinstance(first, CrossingRecord) and first.kind == "transfer_out":
        own_id = first.txn_id
    if own_id is None:
        return False
    epoch = own_id // TXN_IDS_PER_EPOCH
    return own_id > max(rec.acked.max_in_epoch(epoch), rec.holds.max_in_epoch(epoch))


async def check_ledger(
    settings: Settings, writer_wait_s: float, rec: Recorder, violations: list[str]
) -> dict[str, Any]:
    redis, engine = connect_redis(settings), connect_database(settings)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        # WALLET_BUCKETS as the deployment's, or every key below is another's.
        await check_bucket_count(redis, engine, settings.buckets)
        # A bucket's stream is in the order of its counter's ids: its writer has caught up
        # with the tool once its unpersisted tail starts after the last id the tool was
        # given in that epoch (of a transaction or a hold: both come from one counter).
        while True:
            tails = [await unpersisted_tail(redis, b, 1) for b in keyspace.all_buckets()]
            behind = [tail for tail in tails if not _caught_up(tail, rec)]
            caught_up = not behind
            if caught_up or loop.time() - start >= writer_wait_s:
                break
            await asyncio.sleep(_POLL_S)
        waited = loop.time() - start
        if not caught_up:
            violations.append(
                f"the writer had not stored {behind[0].describe_first()} after {writer_wait_s:g} s"
            )
        report = await reconcile(redis, engine, max(1.0, writer_wait_s - waited))
        if not report.ok:
            violations.append("reconcile: " + format_report(report))
        async with engine.connect() as connection:
            figures = await _compare_rows(connection, rec, violations)
            figures |= await _compare_refunds(connection, rec, violations)
            figures |= await _compare_holds(connection, rec, violations)
            figures |= await _compare_hold_events(connection, rec, violations)
    finally:
        await engine.dispose()
        await redis.aclose()
    return {
        "writer_caught_up": caught_up,
        "writer_wait_s": round(waited, 3),
        "reconcile_ok": report.ok,
        "reconcile_users_checked": report.users_checked,
        "acknowledged_transactions": len(rec.acked),
        **figures,
    }


async def _compare_rows(
    connection: AsyncConnection, rec: Recorder, violations: list[str]
) -> dict[str, int]:
    """Reads the ledger from the first to the last acknowledged id, keeping the rows that
    touch the tool's users; then counts their rows outside that span (there must be none).
    A transfer across buckets counts once its credit is in the ledger (``_money_rows``)."""
    first, last, users = rec.acked.min, rec.acked.max, rec.totals.keys()
    seen = IdSet()
    totals: dict[int, Totals] = {}
    extra: list[int] = []
    duplicated: list[int] = []
    unlike: list[int] = []  # kind, hold_id or refund_of not as acknowledged
    uneven: list[int] = []  # across buckets: the payer gave another amount than the payee got
    after = first - 1
    while after < last:
        page = (
            await connection.execute(
                select(
                    M.c.id,
                    M.c.from_user_id,
                    M.c.to_user_id,
                    M.c.amount_kopecks,
                    M.c.kind,
                    M.c.hold_id,
                    M.c.refund_of,
                    M.c.reserved_kopecks,
                )
                .where(M.c.id > after, M.c.id <= last)
                .order_by(M.c.id)
                .limit(PAGE)
            )
        ).all()
        if not page:
            break
        after = page[-1][0]
        for txn_id, from_id, to_id, amount, kind, hold_id, refund_of, reserved in page:
            if to_id not in users and from_id not in users:
                continue
            if reserved != amount:
                uneven.append(txn_id)
            if not seen.add(txn_id):
                duplicated.append(txn_id)
            elif txn_id not in rec.acked:
                extra.append(txn_id)
            elif (kind, hold_id, refund_of) != _acknowledged_kind(rec, txn_id, from_id):
                unlike.append(txn_id)
            book(totals, from_id, to_id, amount)
    outside = 0
    user_list = list(users)
    for i in range(0, len(user_list), USER_CHUNK):
        chunk = user_list[i : i + USER_CHUNK]
        outside += (
            await connection.execute(
                select(func.count()).where(
                    or_(M.c.to_user_id.in_(chunk), M.c.from_user_id.in_(chunk)),
                    or_(M.c.id < first, M.c.id > last),
                )
            )
        ).scalar_one()
    missing = [] if seen.count - len(extra) == len(rec.acked) else _missing(rec.acked, seen)
    differing = [u for u in users if totals.get(u, Totals()) != rec.totals[u]]
    for ids, what in (
        (missing, "acknowledged transactions are not in the ledger: ids"),
        (extra, "ledger rows of the tool's users were never acknowledged: ids"),
        (duplicated, "transaction ids are in the ledger more than once:"),
        (unlike, "ledger rows differ in kind, hold_id or refund_of from their 201s: ids"),
        (differing, "users' ledger rows differ from their 201s: users"),
        (uneven, "transfers across buckets took from the payer another amount than they gave:"),
    ):
        if ids:
            violations.append(f"{len(ids)} {what} {_listed(ids)}")
    if outside:
        violations.append(f"{outside} ledger rows of the tool's users outside ids {first}..{last}")
    return {
        "ledger_rows": seen.count + len(duplicated) + outside,
        "missing": len(missing),
        "unacknowledged_rows": len(extra) + outside,
        "duplicated_ids": len(duplicated),
        "kind_hold_or_refund_differing": len(unlike),
        "reservation_and_credit_differing": len(uneven),
        "users_differing": len(differing),
    }


def _acknowledged_kind(rec: Recorder, txn_id: int, from_id: int | None) -> tuple[Any, ...]:
    """(kind, hold_id, refund_of) of an acknowledged transaction, as its row must have them."""
    if txn_id in rec.refunds:
        return ("refund", None, rec.refunds[txn_id])
    return ("deposit" if from_id is None else "transfer", rec.captures.get(txn_id), None)


async def _compare_refunds(
    connection: AsyncConnection, rec: Recorder, violations: list[str]
) -> dict[str, int]:
    """No transfer's refunds in the ledger add up to more than it, and each refund is of a
    transfer its refunder received."""
    if not rec.refunds:
        return {"refunds_over_transfer": 0, "refunds_of_no_transfer_received": 0}
    refund, transfer = aliased(M), aliased(M)
    # refund_of -> (refunded so far, the transfer's amount, 0 when there is no transfer)
    refunded: dict[int, tuple[int, int]] = {}
    strays: list[int] = []
    user_list = list(rec.totals)
    for i in range(0, len(user_list), USER_CHUNK):
        rows = await connection.execute(
            select(
                refund.c.id,
                refund.c.refund_of,
                refund.c.amount_kopecks,
                refund.c.from_user_id,
                transfer.c.kind,
                transfer.c.to_user_id,
                transfer.c.amount_kopecks,
            )
            .join(transfer, transfer.c.id == refund.c.refund_of, isouter=True)
            .where(
                refund.c.kind == "refund", refund.c.from_user_id.in_(user_list[i : i + USER_CHUNK])
            )
        )
        for refund_id, refund_of, amount, refunder, kind, recipient, transferred in rows:
            if refund_of is None or kind != "transfer" or recipient != refunder:
                strays.append(refund_id)
                continue
            so_far, _ = refunded.get(refund_of, (0, 0))
            refunded[refund_of] = (so_far + amount, transferred)
    over = [f"{t}: {r} of {a}" for t, (r, a) in sorted(refunded.items()) if r > a]
    if over:
        violations.append(f"{len(over)} transfers refunded beyond their amount: {_listed(over)}")
    if strays:
        violations.append(
            f"{len(strays)} refunds are of no transfer their refunder received: {_listed(strays)}"
        )
    return {"refunds_over_transfer": len(over), "refunds_of_no_transfer_received": len(strays)}


async def _compare_holds(
    connection: AsyncConnection, rec: Recorder, violations: list[str]
) -> dict[str, int]:
    """The ``holds`` rows of the tool's users are exactly the acknowledged holds, with per
    payer the same count and sum."""
    users = rec.totals.keys()
    seen = IdSet()
    totals: dict[int, HoldTotals] = {}
    extra: list[int] = []
    after, last = rec.holds.min - 1, rec.holds.max
    while after < last:
        page = (
            await connection.execute(
                select(H.id, H.from_user_id, H.to_user_id, H.amount_kopecks)
                .where(H.id > after, H.id <= last)
                .order_by(H.id)
                .limit(PAGE)
            )
        ).all()
        if not page:
            break
        after = page[-1][0]
        for hold_id, from_id, to_id, amount in page:
            if from_id not in users and to_id not in users:
                continue
            seen.add(hold_id)
            if hold_id not in rec.holds:
                extra.append(hold_id)
            total = totals.get(from_id, HoldTotals())
            totals[from_id] = HoldTotals(total.holds + 1, total.kopecks + amount)
    outside = 0
    user_list = list(users)
    for i in range(0, len(user_list), USER_CHUNK):
        chunk = user_list[i : i + USER_CHUNK]
        outside += (
            await connection.execute(
                select(func.count()).where(
                    or_(H.from_user_id.in_(chunk), H.to_user_id.in_(chunk)),
                    or_(H.id < rec.holds.min, H.id > last),
                )
            )
        ).scalar_one()
    missing = [h for h in rec.holds if h not in seen]
    differing = [
        u for u in users if totals.get(u, HoldTotals()) != rec.hold_totals.get(u, HoldTotals())
    ]
    for ids, what in (
        (missing, "acknowledged holds are not in the ledger: ids"),
        (extra, "ledger holds of the tool's users were never acknowledged: ids"),
        (differing, "users' ledger holds differ from their 201s: users"),
    ):
        if ids:
            violations.append(f"{len(ids)} {what} {_listed(ids)}")
    if outside:
        violations.append(f"{outside} ledger holds of the tool's users outside the ids it knows")
    return {
        "hold_rows": seen.count + outside,
        "holds_missing": len(missing),
        "unacknowledged_holds": len(extra) + outside,
        "payers_holds_differing": len(differing),
    }


def unacknowledged_ends(
    events: dict[int, tuple[str, int | None]], acknowledged: set[int], may_expire: set[int]
) -> list[str]:
    """The holds whose end in the ledger no answer of the service explains: neither a
    capture or void it acknowledged (or that got no answer), nor an expiry of a hold that
    may have expired."""
    return [
        f"hold {h}: {event}"
        for h, (event, _) in sorted(events.items())
        if h not in acknowledged and not (event == "expired" and h in may_expire)
    ]


async def _compare_hold_events(
    connection: AsyncConnection, rec: Recorder, violations: list[str]
) -> dict[str, int]:
    """Each acknowledged capture and void has its ``hold_events`` row; no hold the tool
    made has another end, but an expiry of one that may have expired (or whose capture or
    void got no answer)."""
    captured_by = {hold_id: txn_id for txn_id, hold_id in rec.captures.items()}
    doubtful = {h.id for h in rec.doubtful}
    may_expire = {h.id for h in rec.pending if not h.pending_throughout(time.time())}
    events: dict[int, tuple[str, int | None]] = {}
    after, last = rec.holds.min - 1, rec.holds.max
    while after < last:
        page = (
            await connection.execute(
                select(E.hold_id, E.event, E.transaction_id)
                .where(E.hold_id > after, E.hold_id <= last)
                .order_by(E.hold_id)
                .limit(PAGE)
            )
        ).all()
        if not page:
            break
        after = page[-1][0]
        events.update((h, (event, txn)) for h, event, txn in page if h in rec.holds)
    missing = [h for h, txn in captured_by.items() if events.get(h) != ("captured", txn)]
    missing += [h for h in rec.voided if events.get(h, ("",))[0] != "voided"]
    # It may have expired if the tool saw it past its expiry (or refused as not pending),
    # or still had it pending but not surely so until now.
    may_expire |= set(rec.expired)
    wrong = unacknowledged_ends(events, set(captured_by) | set(rec.voided) | doubtful, may_expire)
    if missing:
        violations.append(
            f"{len(missing)} acknowledged captures and voids have no hold_events row as"
            f" acknowledged: holds {_listed(missing)}"
        )
    if wrong:
        violations.append(
            f"{len(wrong)} holds ended in the ledger unlike the 201s: {_listed(wrong)}"
        )
    return {
        "hold_events": len(events),
        "hold_events_missing": len(missing),
        "hold_events_unacknowledged": len(wrong),
    }


def _missing(acked: IdSet, seen: IdSet) -> list[int]:
    return [txn_id for txn_id in acked if txn_id not in seen]
