"""``wallet reconcile``: every Redis balance against the PostgreSQL ledger.

A user's ledger balance is deposits in + transfers and refunds in - transfers and refunds
out (holds move no posted money until captured; a capture is a transfer). Money may keep
moving while this runs, so each batch of users is compared at one point in time:

1. one MULTI/EXEC reads the batch's balances together with ``txn:seq`` (S), so the
   balances are exactly the result of transactions 1..S;
2. the ledger is complete up to S once the writer's unpersisted tail starts after
   transaction S (the stream is in id order: the scripts assign the id and append the
   entry in one atomic step; a new hold's id comes from the same counter, and a void or
   an expiry of a hold, which takes no id, counts as not after S). We wait up to
   ``wait_for_writer_s`` for that, else the report says "writer behind", a failure;
3. the ledger sums for the batch count only ``id <= S``.

It also reports users in PostgreSQL without a Redis wallet, Redis wallets without a
PostgreSQL user, and a ``txn:seq`` below the ledger's largest id (new ids would
collide with stored ones). Read-only on both sides.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from redis.asyncio import Redis
from sqlalchemy import Boolean, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.models import TRANSFER_KINDS_SQL, LedgerTransaction, User
from service.domain.amounts import format_rubles
from service.domain.holds import HoldEvent
from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.stream_tail import Tail, unpersisted_tail

BATCH_SIZE = 500
_POLL_S = 0.05
_REPORT_LIMIT = 20
_WALLET_KEY = re.compile(rb"user:\{([1-9][0-9]{0,14})\}")


class Drift(NamedTuple):
    user_id: int
    redis_kopecks: int
    ledger_kopecks: int


@dataclass(slots=True)
class ReconcileReport:
    users_checked: int = 0
    drifts: list[Drift] = field(default_factory=list)
    # PostgreSQL users without a wallet in Redis.
    missing_in_redis: list[int] = field(default_factory=list)
    # Redis wallets without a PostgreSQL user.
    missing_in_ledger: list[int] = field(default_factory=list)
    # A transaction already in Redis did not reach the ledger within the wait.
    writer_behind: bool = False
    first_unpersisted_txn_id: int | None = None  # when that first record is a transaction
    first_unpersisted: str | None = None  # the first record not in the ledger, described
    # (txn:seq, largest ledger id) when the counter is below the ledger.
    seq_behind_ledger: tuple[int, int] | None = None
    # The largest S a batch was compared at.
    through_txn_id: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.drifts
            or self.missing_in_redis
            or self.missing_in_ledger
            or self.writer_behind
            or self.seq_behind_ledger
        )


T = LedgerTransaction


async def ledger_balances(
    connection: AsyncConnection, user_ids: Sequence[int], through_txn_id: int | None = None
) -> dict[int, int]:
    """Each user's ledger balance (0 for a user with no transactions), counting only
    transactions with ``id <= through_txn_id`` when it is given.

    Three queries, one per partial index: deposits in, transfers and refunds in, transfers
    and refunds out.
    """
    balances = dict.fromkeys(user_ids, 0)
    if not user_ids:
        return balances
    limit = () if through_txn_id is None else (T.id <= through_txn_id,)
    parts = [
        (T.to_user_id, 1, (literal_column("kind = 'deposit'", Boolean),)),
        (T.to_user_id, 1, (literal_column(TRANSFER_KINDS_SQL, Boolean),)),
        (T.from_user_id, -1, (T.from_user_id.is_not(None),)),
    ]
    for column, sign, where in parts:
        rows = await connection.execute(
            select(column, func.sum(T.amount_kopecks))
            .where(*where, column.in_(user_ids), *limit)
            .group_by(column)
        )
        for user_id, total in rows:
            balances[cast(int, user_id)] += sign * int(total)
    return balances


async def user_id_batches(engine: AsyncEngine, size: int) -> AsyncIterator[list[int]]:
    """Every PostgreSQL user id, ascending, ``size`` at a time (keyset pagination)."""
    last = 0
    while True:
        async with engine.connect() as connection:
            ids = list(
                (
                    await connection.execute(
                        select(User.id).where(User.id > last).order_by(User.id).limit(size)
                    )
                ).scalars()
            )
        if not ids:
            return
        yield ids
        last = ids[-1]


async def _snapshot(redis: Redis, user_ids: Sequence[int]) -> tuple[list[int | None], int]:
    """The users' balances (None: no wallet) and txn:seq, read atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        for user_id in user_ids:
            pipe.hget(keyspace.user(user_id), "balance_kopecks")
        pipe.get(keyspace.TXN_SEQ)
        replies = cast(list[bytes | None], await pipe.execute())
    seq = replies[-1]
    return [None if raw is None else int(raw) for raw in replies[:-1]], int(seq or 0)


def _starts_after(tail: Tail, through_txn_id: int) -> bool:
    """True when the tail's first entry came after transaction ``through_txn_id``."""
    if tail.empty:
        return True
    first = tail.records[0] if tail.records else None
    if isinstance(first, Transaction):
        return first.txn_id > through_txn_id
    if isinstance(first, HoldEvent) and first.kind == "hold_created":
        return first.hold_id > through_txn_id
    return False  # a void or an expiry (no id of its own), or an unparseable entry


async def _first_unpersisted_at_or_below(redis: Redis, through_txn_id: int, wait_s: float) -> Tail:
    """An empty tail once every transaction with id <= through_txn_id is in the ledger;
    otherwise, after waiting up to wait_s, the tail's first entry (max_entries=1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        tail = await unpersisted_tail(redis, max_entries=1)
        if _starts_after(tail, through_txn_id):
            return Tail(records=[], overflow=False)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return tail
        await asyncio.sleep(min(_POLL_S, remaining))


async def _wallets_without_user(redis: Redis, engine: AsyncEngine) -> list[int]:
    """Redis wallets whose user is not in PostgreSQL. Redis is scanned first: sign-up
    commits the user before it creates the wallet, so a wallet seen here has its user
    visible to the later query."""
    orphans: list[int] = []

    async def check(ids: set[int]) -> None:
        async with engine.connect() as connection:
            known = set(
                (await connection.execute(select(User.id).where(User.id.in_(ids)))).scalars()
            )
        orphans.extend(sorted(ids - known))

    batch: set[int] = set()
    async for key in redis.scan_iter(match="user:{*}", count=1000):
        match = _WALLET_KEY.fullmatch(cast(bytes, key))
        if match is None:
            continue
        batch.add(int(match.group(1)))
        if len(batch) >= BATCH_SIZE:
            await check(batch)
            batch = set()
    if batch:
        await check(batch)
    return sorted(set(orphans))


async def reconcile(redis: Redis, engine: AsyncEngine, wait_for_writer_s: float) -> ReconcileReport:
    """Compares every Redis balance with the ledger; see the module docstring."""
    report = ReconcileReport()
    async for user_ids in user_id_batches(engine, BATCH_SIZE):
        balances, seq = await _snapshot(redis, user_ids)
        present = [(u, b) for u, b in zip(user_ids, balances, strict=True) if b is not None]
        report.missing_in_redis.extend(
            u for u, b in zip(user_ids, balances, strict=True) if b is None
        )
        if report.writer_behind or not present:
            continue  # without a complete ledger a comparison would only report false drift
        behind = await _first_unpersisted_at_or_below(redis, seq, wait_for_writer_s)
        if not behind.empty:
            report.writer_behind = True
            first = behind.transactions[0] if behind.transactions else None
            report.first_unpersisted_txn_id = first.txn_id if first else None
            report.first_unpersisted = behind.describe_first()
            continue
        async with engine.connect() as connection:
            ledger = await ledger_balances(connection, [u for u, _ in present], seq)
        report.users_checked += len(present)
        report.through_txn_id = max(report.through_txn_id, seq)
        report.drifts.extend(
            Drift(user_id, kopecks, ledger[user_id])
            for user_id, kopecks in present
            if kopecks != ledger[user_id]
        )
    # A user signing up is committed in PostgreSQL a moment before the wallet exists:
    # look once more before calling a wallet missing.
    report.missing_in_redis = await _still_missing(redis, report.missing_in_redis)
    report.missing_in_ledger = await _wallets_without_user(redis, engine)
    # The ledger first: every id in it was issued before this GET.
    async with engine.connect() as connection:
        last_id = int((await connection.execute(select(func.max(T.id)))).scalar() or 0)
    seq = int(cast(bytes | None, await redis.get(keyspace.TXN_SEQ)) or 0)
    if seq < last_id:
        report.seq_behind_ledger = (seq, last_id)
    return report


async def _still_missing(redis: Redis, user_ids: list[int]) -> list[int]:
    missing: list[int] = []
    for start in range(0, len(user_ids), BATCH_SIZE):
        chunk = user_ids[start : start + BATCH_SIZE]
        async with redis.pipeline(transaction=False) as pipe:
            for user_id in chunk:
                pipe.exists(keyspace.user(user_id))
            exists = cast(list[int], await pipe.execute())
        missing.extend(u for u, e in zip(chunk, exists, strict=True) if not e)
    return missing


def _kopecks(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    return f"{amount} kopecks ({sign}{format_rubles(abs(amount))} RUB)"


def _ids(user_ids: Iterable[int]) -> str:
    ids = list(user_ids)
    shown = ", ".join(str(u) for u in ids[:_REPORT_LIMIT])
    more = len(ids) - _REPORT_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def format_report(report: ReconcileReport) -> str:
    """A human-readable summary, one finding per line; the first line says OK or FAILED."""
    status = "OK" if report.ok else "FAILED"
    lines = [
        f"reconcile {status}: {report.users_checked} users checked against the ledger"
        f" through transaction {report.through_txn_id}"
    ]
    if report.writer_behind:
        lines.append(
            f"writer behind: {report.first_unpersisted} is in Redis but not"
            " yet in the ledger; balances from there on were not compared"
        )
    if report.drifts:
        lines.append(f"drift in {len(report.drifts)} balances:")
        for drift in report.drifts[:_REPORT_LIMIT]:
            diff = drift.redis_kopecks - drift.ledger_kopecks
            lines.append(
                f"  user {drift.user_id}: Redis {_kopecks(drift.redis_kopecks)},"
                f" ledger {_kopecks(drift.ledger_kopecks)}, difference {diff:+d} kopecks"
            )
        if len(report.drifts) > _REPORT_LIMIT:
            lines.append(f"  and {len(report.drifts) - _REPORT_LIMIT} more")
    if report.missing_in_redis:
        lines.append(
            f"{len(report.missing_in_redis)} users have no Redis wallet:"
            f" {_ids(report.missing_in_redis)}"
        )
    if report.missing_in_ledger:
        lines.append(
            f"{len(report.missing_in_ledger)} Redis wallets have no PostgreSQL user:"
            f" {_ids(report.missing_in_ledger)}"
        )
    if report.seq_behind_ledger is not None:
        seq, last_id = report.seq_behind_ledger
        lines.append(
            f"txn:seq is {seq} but the ledger holds transaction {last_id}:"
            " new transaction ids would collide with stored ones"
        )
    return "\n".join(lines)
