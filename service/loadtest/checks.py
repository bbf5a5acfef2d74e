"""The checks of ``wallet loadtest``, once the load has stopped.

Over HTTP: every user's balance (GET /api/balance/). Their sum must equal the sum of the
acknowledged deposits (funding included; transfers only move money between the tool's
users), none may be negative, and each must equal what the user's own acknowledged
operations add up to. This is exact because only the tool moves its users.

With the Redis and database URLs: once the writer has stored every acknowledged
transaction (waited for up to ``writer_wait_s``), ``service.ledger.reconcile`` must be
clean, and the ledger rows that touch the tool's users must be exactly the acknowledged
transactions: every acknowledged id once, no other id, and per user the same deposits,
transfers in and out (sums and count) as the 201 bodies said.
"""

import asyncio
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import connect_database
from persistence.models import LedgerTransaction as T
from service.ledger.reconcile import format_report, reconcile
from service.loadtest.driver import (
    CHECK_CONCURRENCY,
    Driver,
    Recorder,
    Totals,
    book,
    bounded_map,
)
from service.loadtest.stats import IdSet
from service.redis.client import connect_redis
from service.redis.stream_tail import unpersisted_tail
from service.settings import Settings

PAGE = 10_000
USER_CHUNK = 1_000
_SHOWN = 5
_POLL_S = 0.1


def _listed(items: list[Any]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(map(str, items[:_SHOWN])) + more


async def check_balances(driver: Driver, violations: list[str]) -> dict[str, Any]:
    users, rec = driver.users, driver.rec
    replies = await bounded_map(
        min(driver.config.concurrency, CHECK_CONCURRENCY),
        lambda user: driver.call("check balance", "GET", "/api/balance/", user),
        users,
    )
    observed: dict[int, int] = {}
    for user, reply in zip(users, replies, strict=True):
        if reply is None or reply.status != 200:
            violations.append(f"could not read the balance of user {user.id}")
        else:
            observed[user.id] = int(reply.body["balance_kopecks"])
    total = sum(observed.values())
    negative = sorted(u for u, b in observed.items() if b < 0)
    wrong = [
        f"user {u}: 201s say {rec.totals[u].balance}, service says {b}"
        for u, b in sorted(observed.items())
        if b != rec.totals[u].balance
    ]
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
    return {
        "users": len(users),
        "sum_balances_kopecks": total,
        "sum_acknowledged_deposits_kopecks": rec.deposits,
        "negative_balances": len(negative),
        "balances_not_as_acknowledged": len(wrong),
        "unknown_outcomes": rec.unknown_outcomes,
    }


async def check_ledger(
    settings: Settings, writer_wait_s: float, rec: Recorder, violations: list[str]
) -> dict[str, Any]:
    redis, engine = connect_redis(settings), connect_database(settings)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        # The stream is in id order: the writer has caught up with the tool once its
        # unpersisted tail starts after the last acknowledged id.
        while True:
            tail = await unpersisted_tail(redis, max_entries=1)
            caught_up = not tail.transactions or tail.transactions[0].txn_id > rec.acked.max
            if caught_up or loop.time() - start >= writer_wait_s:
                break
            await asyncio.sleep(_POLL_S)
        waited = loop.time() - start
        if not caught_up:
            violations.append(
                f"the writer had not stored transaction {tail.transactions[0].txn_id}"
                f" after {writer_wait_s:g} s"
            )
        report = await reconcile(redis, engine, max(1.0, writer_wait_s - waited))
        if not report.ok:
            violations.append("reconcile: " + format_report(report))
        async with engine.connect() as connection:
            figures = await _compare_rows(connection, rec, violations)
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
    touch the tool's users; then counts their rows outside that span (there must be none)."""
    first, last, users = rec.acked.min, rec.acked.max, rec.totals.keys()
    seen = IdSet()
    totals: dict[int, Totals] = {}
    extra: list[int] = []
    duplicated: list[int] = []
    after = first - 1
    columns = (T.id, T.from_user_id, T.to_user_id, T.amount_kopecks)
    while after < last:
        page = (
            await connection.execute(
                select(*columns).where(T.id > after, T.id <= last).order_by(T.id).limit(PAGE)
            )
        ).all()
        if not page:
            break
        after = page[-1][0]
        for txn_id, from_id, to_id, amount in page:
            if to_id not in users and from_id not in users:
                continue
            if not seen.add(txn_id):
                duplicated.append(txn_id)
            elif txn_id not in rec.acked:
                extra.append(txn_id)
            book(totals, from_id, to_id, amount)
    outside = 0
    user_list = list(users)
    for i in range(0, len(user_list), USER_CHUNK):
        chunk = user_list[i : i + USER_CHUNK]
        outside += (
            await connection.execute(
                select(func.count()).where(
                    or_(T.to_user_id.in_(chunk), T.from_user_id.in_(chunk)),
                    or_(T.id < first, T.id > last),
                )
            )
        ).scalar_one()
    missing = [] if seen.count - len(extra) == len(rec.acked) else _missing(rec.acked, seen)
    differing = [u for u in users if totals.get(u, Totals()) != rec.totals[u]]
    for ids, what in (
        (missing, "acknowledged transactions are not in the ledger: ids"),
        (extra, "ledger rows of the tool's users were never acknowledged: ids"),
        (duplicated, "transaction ids are in the ledger more than once:"),
        (differing, "users' ledger rows differ from their 201s: users"),
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
        "users_differing": len(differing),
    }


def _missing(acked: IdSet, seen: IdSet) -> list[int]:
    return [txn_id for txn_id in acked if txn_id not in seen]
