"""``wallet reconcile``: Redis against the PostgreSQL ledger.

For every user: the balance, ``held_kopecks`` and ``incoming_kopecks``; for every refunded
transfer: its refunded total. Money may keep moving while this runs, so each batch is
compared at one point in time, one bucket at a time (a user's wallet, the holds the user
pays and the refunds the user gives are all in the user's bucket, with ids from its
counter):

1. one atomic read (``lua/reconcile_snapshot.lua``) takes the batch's wallets (or refunded
   totals) of one bucket together with the bucket's ``txn:seq`` (S), its stream's last entry
   id (L) and the ``holds:due`` members already due: the state is exactly the result of the
   stream's entries up to L (every script appends its entries in the step that changes the
   state), and of the bucket's transactions up to S (a bucket's counter only goes up, into
   epochs above every earlier one);
2. the ledger holds every record up to L once the writer's unpersisted tail of that stream
   starts after L. We wait up to ``wait_for_writer_s`` for that, else the report says
   "writer behind", a failure;
3. the ledger is read as of that point: balances and refunded totals count only
   transactions with ``id <= S``, holds only the records up to L (``stream_entry_id``),
   so that a hold voided or expired after the read, which takes no id, does not count.

What each amount must be (docs/holds.md):

- balance: deposits in + transfers and refunds in - transfers and refunds out (holds
  move no posted money until captured; a capture is a transfer); for transfers across
  buckets, - the user's reservations + the voids that gave them back + the credits the
  user received, each a record of the user's bucket, so counted up to L
  (service/ledger/crossing_totals.py);
- held: the sum of the user's pending holds as payer (a hold with no end). Exact: a
  hold leaves ``holds:{<payer>}`` (and held) only in a step that records its end (a
  capture, a void, or an expiry released by a spending script or the sweeper), so an
  expired hold not yet released is pending in both;
- incoming: the sum of the pending holds toward the user, plus those of the user's holds
  that the ledger says expired and that ``holds:due`` still lists (read in the same step),
  plus the credits from other buckets the user's bucket expects (``inbound:due``, read in
  the same step: an expectation keeps the payee's headroom and is no stream record).
  Exact: a hold leaves ``holds:due`` (and its payee's incoming) when captured or voided
  (recorded), or when the sweeper takes it, which records its expiry unless a spending
  script recorded it before, so the holds:due members that the ledger says ended can only
  be expired ones the sweeper has not taken yet; and a member is due (its score, the
  expiry, is past) before anything can expire it;
- refunded total ``refunded:{<refunder>}:<txn_id>``: the sum of the refunds of that
  transfer (both ways: keys the ledger has no refunds for are reported too), and no
  transfer is refunded beyond its amount.

Per bucket, the money in transit (``transit:{b}``: transfers across buckets reserved and
not settled or voided) against the ledger's reservations of the bucket with no end, as of
the bucket's snapshot; the report gives the total in transit.

It also reports users in PostgreSQL without a Redis wallet, Redis wallets without a
PostgreSQL user, and a bucket's ``txn:seq`` below an id the ledger holds in the counter's
epoch (new ids would collide with stored ones; ids of other epochs cannot). Read-only on
both sides (but for recording the count of buckets, as every process does, should this be a
deployment's very first start: service/ledger/bucket_count.py).
"""

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Boolean, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.models import TRANSFER_KINDS_SQL, LedgerTransaction, User
from service.domain.amounts import format_rubles
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.ledger.crossing_totals import (
    UNEVEN_FINDINGS,
    UnevenSide,
    crossing_balance_changes,
    in_transit,
    uneven_sides,
)
from service.ledger.hold_totals import (
    EntryId,
    expired_holds,
    incoming_of_payees,
    parse_entry_id,
    pending_holds_of_payers,
)
from service.ledger.id_counter import LEDGER_ID_COLUMNS
from service.ledger.refund_totals import refunded_totals_of, refunded_totals_page
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.stream_tail import Tail, unpersisted_tail
from service.redis.types import RedisClient

_Item = TypeVar("_Item")

BATCH_SIZE = 500
_POLL_S = 0.05
# How often a snapshot is read again while an expectation's record is missing (a slot being
# moved): 10 s, then the reconcile stops with the script's answer.
_RECORD_MISSING_TRIES = 200
# The writer starts a counter set aside again within half a second (KEEPER_INTERVAL_S).
COUNTER_RESTART_WAIT_S = 5.0
_REPORT_LIMIT = 20
_WALLET_KEY = re.compile(rb"user:\{b[0-9]+\}:([1-9][0-9]{0,14})")
_REFUNDED_KEY = re.compile(rb"refunded:\{b[0-9]+\}:([1-9][0-9]{0,14}):([1-9][0-9]{0,14})")


class Drift(NamedTuple):
    user_id: int
    redis_kopecks: int
    ledger_kopecks: int


class RefundedDrift(NamedTuple):
    refunder: int
    txn_id: int  # the transfer refunded
    redis_kopecks: int
    ledger_kopecks: int


class CounterBehind(NamedTuple):
    bucket: int
    txn_seq: int
    ledger_txn_id: int  # an id the ledger holds in the counter's epoch, above it


class TransitDrift(NamedTuple):
    bucket: int
    redis_kopecks: int  # transit:{b}
    ledger_kopecks: int  # the bucket's reservations with no end


class OverRefund(NamedTuple):
    txn_id: int
    refunded_kopecks: int
    transfer_kopecks: int | None  # None: the ledger has no such transfer


@dataclass(slots=True)
class ReconcileReport:
    users_checked: int = 0
    drifts: list[Drift] = field(default_factory=list)
    # held_kopecks against the ledger's pending holds as payer.
    held_drifts: list[Drift] = field(default_factory=list)
    # incoming_kopecks against the ledger's pending (or expired and unswept) holds toward.
    incoming_drifts: list[Drift] = field(default_factory=list)
    refunded_checked: int = 0
    refunded_drifts: list[RefundedDrift] = field(default_factory=list)
    over_refunded: list[OverRefund] = field(default_factory=list)
    # PostgreSQL users without a wallet in Redis.
    missing_in_redis: list[int] = field(default_factory=list)
    # Redis wallets without a PostgreSQL user.
    missing_in_ledger: list[int] = field(default_factory=list)
    # A record already in Redis did not reach the ledger within the wait.
    writer_behind: bool = False
    first_unpersisted_txn_id: int | None = None  # when that first record is a transaction
    first_unpersisted: str | None = None  # the first record not in the ledger, described
    # Counters below an id the ledger holds in their epoch.
    counters_behind_ledger: list[CounterBehind] = field(default_factory=list)
    # Transfers across buckets reserved and not settled or voided yet, over every bucket
    # (Redis's transit:{b}, each as of its bucket's snapshot), and where the ledger differs.
    in_transit_kopecks: int = 0
    in_transit_reservations: int = 0
    transit_drifts: list[TransitDrift] = field(default_factory=list)
    # Sides of transfers across buckets whose counterpart the ledger lacks.
    uneven_sides: list[UnevenSide] = field(default_factory=list)
    # The largest S a batch was compared at.
    through_txn_id: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.drifts
            or self.held_drifts
            or self.incoming_drifts
            or self.refunded_drifts
            or self.over_refunded
            or self.missing_in_redis
            or self.missing_in_ledger
            or self.writer_behind
            or self.counters_behind_ledger
            or self.transit_drifts
            or self.uneven_sides
        )


T = LedgerTransaction


async def ledger_balances(
    connection: AsyncConnection,
    user_ids: Sequence[int],
    through: tuple[int, EntryId] | None = None,
) -> dict[int, int]:
    """Each user's ledger balance (0 for a user with no transactions): transactions and the
    sides of transfers across buckets. ``through``, for users of one bucket, is that
    bucket's counter and stream position: only transactions with ``id <=`` the counter and
    sides recorded up to the position count.

    Three queries, one per partial index: deposits in, transfers and refunds in, transfers
    and refunds out; then one per side of transfers across buckets.
    """
    through_txn_id, through_entry = (None, None) if through is None else through
    balances = await crossing_balance_changes(connection, user_ids, through_entry)
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


def _by_bucket(
    items: Iterable[_Item], user_of: Callable[[_Item], int]
) -> list[tuple[int, list[_Item]]]:
    """The items grouped by the bucket of their user, buckets ascending, each group in the
    order given."""
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(keyspace.bucket_of(user_of(item)), []).append(item)
    return sorted(groups.items())


@dataclass(frozen=True, slots=True)
class _Snapshot:
    bucket: int
    seq: int
    last_entry: EntryId
    due: list[tuple[int, int, int, int]]  # holds:due members due: hold, from, to, amount
    wallets: list[tuple[int, int, int] | None]  # balance, held, incoming; None: no wallet
    refunded: list[int | None]
    transit_kopecks: int
    expected: list[tuple[int, int]]  # credits expected (read with due): payee, amount


def _int(raw: Any) -> int:
    return 0 if raw is None else int(raw)


async def _snapshot(
    redis: RedisClient,
    bucket: int,
    user_ids: Sequence[int] = (),
    refunded: Sequence[tuple[int, int]] = (),
    with_due: bool = False,
) -> _Snapshot:
    """The snapshot of these wallets (or refunded totals), all of ``bucket``."""
    assert all(keyspace.bucket_of(u) == bucket for u in user_ids), (bucket, user_ids)
    assert all(keyspace.bucket_of(r) == bucket for r, _ in refunded), (bucket, refunded)
    snapshot = await _read_snapshot(redis, bucket, user_ids, refunded, with_due)
    if snapshot.seq == 0 and await _counter_restarted(redis, bucket):
        snapshot = await _read_snapshot(redis, bucket, user_ids, refunded, with_due)
    return snapshot


async def _counter_restarted(redis: RedisClient, bucket: int) -> bool:
    """Whether the counter, set aside (a new primary, or a slot moved to another:
    service/ledger/id_counter.py), was started again by the writer within
    COUNTER_RESTART_WAIT_S: the comparison reads the ledger as of the counter, and a
    counter being restarted is no drift. The connection that read the snapshot may be the
    one that set it aside, as it opened."""
    if not await redis.exists(keyspace.txn_seq_behind(bucket)):
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COUNTER_RESTART_WAIT_S
    while loop.time() < deadline:
        if await redis.exists(keyspace.txn_seq(bucket)):
            return True
        await asyncio.sleep(_POLL_S)
    return False


async def _read_snapshot(
    redis: RedisClient,
    bucket: int,
    user_ids: Sequence[int],
    refunded: Sequence[tuple[int, int]],
    with_due: bool,
) -> _Snapshot:
    keys = [
        keyspace.txn_seq(bucket),
        keyspace.txn_stream(bucket),
        keyspace.holds_due(bucket),
        keyspace.inbound_due(bucket),
        keyspace.transit(bucket),
    ]
    keys += [keyspace.user(user_id) for user_id in user_ids]
    keys += [keyspace.refunded(refunder, txn_id) for refunder, txn_id in refunded]
    script = LuaScript(redis, "reconcile_snapshot")
    args = [str(len(user_ids)), "1" if with_due else "0"]
    reply = await script(keys=keys, args=args)
    for _ in range(_RECORD_MISSING_TRIES):
        if reply != [b"record_missing"]:
            break
        await asyncio.sleep(_POLL_S)  # a slot being moved: its keys arrive one by one
        reply = await script(keys=keys, args=args)
    if len(reply) != 8:
        raise ScriptArgumentRejected(f"reconcile_snapshot: {reply!r}")
    seq, last_entry, _, due_raw, wallets_raw, refunded_raw, transit, expected_raw = reply
    due = []
    for member in due_raw[0::2]:
        hold_id, from_id, to_id, amount = (int(part) for part in member.split(b":"))
        due.append((hold_id, from_id, to_id, amount))
    wallets: list[tuple[int, int, int] | None] = []
    for i in range(0, len(wallets_raw), 3):
        balance, held, incoming = wallets_raw[i : i + 3]
        wallets.append(None if balance is None else (int(balance), _int(held), _int(incoming)))
    return _Snapshot(
        bucket=bucket,
        seq=int(seq),
        last_entry=parse_entry_id(last_entry.decode()),
        due=due,
        wallets=wallets,
        refunded=[None if raw is None else int(raw) for raw in refunded_raw],
        transit_kopecks=int(transit),
        expected=[
            (int(to_id), int(amount))
            for to_id, amount in zip(expected_raw[0::2], expected_raw[1::2], strict=True)
        ],
    )


def _starts_after(tail: Tail, last_entry: EntryId) -> bool:
    """True when the tail's first entry came after stream entry ``last_entry``."""
    if tail.empty or tail.first_entry_id is None:
        return True
    return parse_entry_id(tail.first_entry_id) > last_entry


async def _wait_for_writer(redis: RedisClient, snapshot: _Snapshot, wait_s: float) -> Tail:
    """An empty tail once every entry of the snapshot's stream up to its last is in the
    ledger; otherwise, after waiting up to wait_s, the tail's first entry (max_entries=1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        tail = await unpersisted_tail(redis, snapshot.bucket, max_entries=1)
        if _starts_after(tail, snapshot.last_entry):
            return Tail(records=[], overflow=False)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return tail
        await asyncio.sleep(min(_POLL_S, remaining))


def _note_writer_behind(report: ReconcileReport, behind: Tail) -> None:
    report.writer_behind = True
    first = behind.transactions[0] if behind.transactions else None
    report.first_unpersisted_txn_id = first.txn_id if first else None
    report.first_unpersisted = behind.describe_first()


async def _wallets_without_user(redis: RedisClient, engine: AsyncEngine) -> list[int]:
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
    async for key in redis.scan_iter(match="user:{b*}:*", count=1000):
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


async def reconcile(
    redis: RedisClient, engine: AsyncEngine, wait_for_writer_s: float
) -> ReconcileReport:
    """Compares every Redis wallet and refunded total with the ledger; see the module
    docstring."""
    report = ReconcileReport()
    async for batch in user_id_batches(engine, BATCH_SIZE):
        for bucket, user_ids in _by_bucket(batch, lambda user_id: user_id):
            await _check_wallets(redis, engine, bucket, user_ids, wait_for_writer_s, report)
    if not report.writer_behind:
        await _compare_refunded_totals(redis, engine, wait_for_writer_s, report)
    # A user signing up is committed in PostgreSQL a moment before the wallet exists:
    # look once more before calling a wallet missing.
    report.missing_in_redis = await _still_missing(redis, report.missing_in_redis)
    report.missing_in_ledger = await _wallets_without_user(redis, engine)
    # Each bucket's position now, before the transit pass waits for every writer to reach a
    # later one: what _check_sides needs.
    first_round = {
        bucket: (await _snapshot(redis, bucket)).last_entry for bucket in keyspace.all_buckets()
    }
    for bucket in keyspace.all_buckets():
        behind = await _counter_behind_ledger(redis, engine, bucket)
        if behind is not None:
            report.counters_behind_ledger.append(behind)
        if not report.writer_behind:
            await _compare_transit(redis, engine, bucket, wait_for_writer_s, report)
    if not report.writer_behind:
        await _check_sides(engine, first_round, report)
    return report


async def _check_sides(
    engine: AsyncEngine, first_round: dict[int, EntryId], report: ReconcileReport
) -> None:
    """The sides of transfers across buckets whose counterpart the ledger lacks, among the
    records up to each bucket's position in ``first_round``: every writer has since stored
    its bucket's records up to a later position (the transit pass), and a side's
    counterpart came before it, so the ledger holds it if it ever will. (A rebuild that
    completes a transfer left uneven writes the missing side after the other: reconcile
    finds it until the writer has stored it.)"""
    async with engine.connect() as connection:
        report.uneven_sides = await uneven_sides(connection, first_round)


async def _compare_transit(
    redis: RedisClient, engine: AsyncEngine, bucket: int, wait_s: float, report: ReconcileReport
) -> None:
    """The bucket's money in transit (transfers across buckets reserved and not ended)
    against its reservations the ledger has no end for, as of the bucket's snapshot."""
    snapshot = await _snapshot(redis, bucket)
    behind = await _wait_for_writer(redis, snapshot, wait_s)
    if not behind.empty:
        _note_writer_behind(report, behind)
        return
    async with engine.connect() as connection:
        ledger_kopecks, reservations = await in_transit(connection, bucket, snapshot.last_entry)
    report.in_transit_kopecks += snapshot.transit_kopecks
    report.in_transit_reservations += reservations
    if snapshot.transit_kopecks != ledger_kopecks:
        report.transit_drifts.append(TransitDrift(bucket, snapshot.transit_kopecks, ledger_kopecks))


async def _check_wallets(
    redis: RedisClient,
    engine: AsyncEngine,
    bucket: int,
    user_ids: list[int],
    wait_for_writer_s: float,
    report: ReconcileReport,
) -> None:
    snapshot = await _snapshot(redis, bucket, user_ids, with_due=True)
    present = [(u, w) for u, w in zip(user_ids, snapshot.wallets, strict=True) if w is not None]
    report.missing_in_redis.extend(
        u for u, w in zip(user_ids, snapshot.wallets, strict=True) if w is None
    )
    if report.writer_behind or not present:
        return  # without a complete ledger a comparison would only report false drift
    behind = await _wait_for_writer(redis, snapshot, wait_for_writer_s)
    if not behind.empty:
        _note_writer_behind(report, behind)
        return
    await _compare_wallets(engine, snapshot, present, report)


async def _txn_seq(redis: RedisClient, bucket: int) -> int:
    return int(cast(bytes | None, await redis.get(keyspace.txn_seq(bucket))) or 0)


async def _counter_behind_ledger(
    redis: RedisClient, engine: AsyncEngine, bucket: int
) -> CounterBehind | None:
    """The bucket's counter when the ledger holds an id of the counter's epoch above it:
    the counter would issue that id again. Ids of another epoch cannot collide: a counter
    only goes up, and moves to an epoch PostgreSQL hands out once, above every other.

    The counter is read again after the ledger: an id stored meanwhile was issued before
    that second read, so it is below the counter unless the counter was set back."""
    epoch = await _txn_seq(redis, bucket) // TXN_IDS_PER_EPOCH
    start, end = epoch * TXN_IDS_PER_EPOCH, (epoch + 1) * TXN_IDS_PER_EPOCH
    async with engine.connect() as connection:
        largest = [
            (await connection.execute(select(func.max(id_)).where(id_ > start, id_ < end))).scalar()
            for id_ in LEDGER_ID_COLUMNS
        ]
    ledger_txn_id = max((int(i) for i in largest if i is not None), default=0)
    seq = await _txn_seq(redis, bucket)
    if seq // TXN_IDS_PER_EPOCH != epoch or ledger_txn_id <= seq:
        return None  # moved on to another epoch meanwhile, or no id above it
    return CounterBehind(bucket, seq, ledger_txn_id)


async def _compare_wallets(
    engine: AsyncEngine,
    snapshot: _Snapshot,
    present: list[tuple[int, tuple[int, int, int]]],
    report: ReconcileReport,
) -> None:
    user_ids = [u for u, _ in present]
    async with engine.connect() as connection:
        balances = await ledger_balances(connection, user_ids, (snapshot.seq, snapshot.last_entry))
        holds = await pending_holds_of_payers(connection, user_ids, snapshot.last_entry)
        incoming = await incoming_of_payees(connection, user_ids, snapshot.last_entry)
        # Due members toward these users that the ledger says expired: not swept yet.
        wanted = set(user_ids)
        candidates = [hold_id for hold_id, _, to_id, _ in snapshot.due if to_id in wanted]
        unswept = await expired_holds(connection, candidates, snapshot.last_entry)
    for hold in unswept.values():
        incoming[hold.to_user_id] += hold.amount_kopecks
    # Credits expected from other buckets keep their headroom in incoming_kopecks: Redis
    # alone knows them (an expectation is no stream record), read in the same step.
    for to_id, amount_kopecks in snapshot.expected:
        if to_id in wanted:
            incoming[to_id] += amount_kopecks
    report.users_checked += len(present)
    report.through_txn_id = max(report.through_txn_id, snapshot.seq)
    for user_id, (balance, held, incoming_kopecks) in present:
        ledger_held = sum(hold.amount_kopecks for hold in holds[user_id])
        if balance != balances[user_id]:
            report.drifts.append(Drift(user_id, balance, balances[user_id]))
        if held != ledger_held:
            report.held_drifts.append(Drift(user_id, held, ledger_held))
        if incoming_kopecks != incoming[user_id]:
            report.incoming_drifts.append(Drift(user_id, incoming_kopecks, incoming[user_id]))


async def _compare_refunded_totals(
    redis: RedisClient, engine: AsyncEngine, wait_s: float, report: ReconcileReport
) -> None:
    """Every refunded transfer of the ledger, then every refunded total Redis holds (one
    the ledger has no refunds for is drift too)."""
    seen: set[tuple[int, int]] = set()
    over: set[int] = set()
    after = 0
    while not report.writer_behind:
        async with engine.connect() as connection:
            totals = await refunded_totals_page(connection, after, BATCH_SIZE)
        if not totals:
            break
        after = totals[-1].txn_id
        await _compare_refunded(
            redis, engine, [(t.refunder, t.txn_id) for t in totals], wait_s, report, seen, over
        )
    batch: list[tuple[int, int]] = []
    async for key in redis.scan_iter(match="refunded:{b*}:*", count=1000):
        if report.writer_behind:
            return
        match = _REFUNDED_KEY.fullmatch(cast(bytes, key))
        if match is None:
            continue
        batch.append((int(match.group(1)), int(match.group(2))))
        if len(batch) >= BATCH_SIZE:
            await _compare_refunded(redis, engine, batch, wait_s, report, seen, over)
            batch = []
    if batch and not report.writer_behind:
        await _compare_refunded(redis, engine, batch, wait_s, report, seen, over)


async def _compare_refunded(
    redis: RedisClient,
    engine: AsyncEngine,
    pairs: list[tuple[int, int]],
    wait_s: float,
    report: ReconcileReport,
    seen: set[tuple[int, int]],
    over: set[int],
) -> None:
    for bucket, of_bucket in _by_bucket(sorted(set(pairs) - seen), lambda pair: pair[0]):
        await _compare_refunded_of_bucket(redis, engine, bucket, of_bucket, wait_s, report, over)
        seen.update(of_bucket)
        if report.writer_behind:
            return


async def _compare_refunded_of_bucket(
    redis: RedisClient,
    engine: AsyncEngine,
    bucket: int,
    pairs: list[tuple[int, int]],
    wait_s: float,
    report: ReconcileReport,
    over: set[int],
) -> None:
    snapshot = await _snapshot(redis, bucket, refunded=pairs)
    behind = await _wait_for_writer(redis, snapshot, wait_s)
    if not behind.empty:
        _note_writer_behind(report, behind)
        return
    async with engine.connect() as connection:
        totals = await refunded_totals_of(connection, pairs, (snapshot.seq, snapshot.last_entry))
    report.refunded_checked += len(pairs)
    for pair, redis_kopecks in zip(pairs, snapshot.refunded, strict=True):
        total = totals.get(pair)
        ledger_kopecks = 0 if total is None else total.refunded_kopecks
        if (redis_kopecks or 0) != ledger_kopecks:
            report.refunded_drifts.append(
                RefundedDrift(pair[0], pair[1], redis_kopecks or 0, ledger_kopecks)
            )
        if total is None or total.txn_id in over:
            continue
        if total.transfer_kopecks is None or total.refunded_kopecks > total.transfer_kopecks:
            over.add(total.txn_id)
            report.over_refunded.append(
                OverRefund(total.txn_id, total.refunded_kopecks, total.transfer_kopecks)
            )


async def _still_missing(redis: RedisClient, user_ids: list[int]) -> list[int]:
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
        + (f", {report.refunded_checked} refunded totals" if report.refunded_checked else "")
    ]
    if report.writer_behind:
        lines.append(
            f"writer behind: {report.first_unpersisted} is in Redis but not"
            " yet in the ledger; wallets and refunded totals from there on were not compared"
        )
    for drifts, what, ledger_side in (
        (report.drifts, "balances", "ledger"),
        (report.held_drifts, "held amounts", "ledger's pending holds as payer"),
        (
            report.incoming_drifts,
            "incoming amounts",
            "ledger's pending (or expired, unswept) holds toward the user",
        ),
    ):
        if not drifts:
            continue
        lines.append(f"drift in {len(drifts)} {what}:")
        for drift in drifts[:_REPORT_LIMIT]:
            diff = drift.redis_kopecks - drift.ledger_kopecks
            lines.append(
                f"  user {drift.user_id}: Redis {_kopecks(drift.redis_kopecks)},"
                f" {ledger_side} {_kopecks(drift.ledger_kopecks)}, difference {diff:+d} kopecks"
            )
        if len(drifts) > _REPORT_LIMIT:
            lines.append(f"  and {len(drifts) - _REPORT_LIMIT} more")
    if report.refunded_drifts:
        lines.append(f"drift in {len(report.refunded_drifts)} refunded totals:")
        for refunded in report.refunded_drifts[:_REPORT_LIMIT]:
            diff = refunded.redis_kopecks - refunded.ledger_kopecks
            lines.append(
                f"  transfer {refunded.txn_id} refunded by user {refunded.refunder}:"
                f" Redis {_kopecks(refunded.redis_kopecks)}, ledger refunds"
                f" {_kopecks(refunded.ledger_kopecks)}, difference {diff:+d} kopecks"
            )
        if len(report.refunded_drifts) > _REPORT_LIMIT:
            lines.append(f"  and {len(report.refunded_drifts) - _REPORT_LIMIT} more")
    if report.over_refunded:
        lines.append(f"{len(report.over_refunded)} transfers refunded beyond their amount:")
        for over in report.over_refunded[:_REPORT_LIMIT]:
            of = (
                "no transfer in the ledger"
                if over.transfer_kopecks is None
                else (f"a transfer of {_kopecks(over.transfer_kopecks)}")
            )
            lines.append(
                f"  transaction {over.txn_id}: refunds of {_kopecks(over.refunded_kopecks)}"
                f" for {of}"
            )
        if len(report.over_refunded) > _REPORT_LIMIT:
            lines.append(f"  and {len(report.over_refunded) - _REPORT_LIMIT} more")
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
    if report.in_transit_kopecks:
        lines.append(
            f"in transit between buckets: {_kopecks(report.in_transit_kopecks)} in"
            f" {report.in_transit_reservations} transfers reserved and not yet settled"
        )
    for transit in report.transit_drifts:
        lines.append(
            f"drift in transit of bucket {transit.bucket}: Redis {_kopecks(transit.redis_kopecks)},"
            f" the ledger's reservations with no end {_kopecks(transit.ledger_kopecks)},"
            f" difference {transit.redis_kopecks - transit.ledger_kopecks:+d} kopecks"
        )
    for side in report.uneven_sides[:_REPORT_LIMIT]:
        lines.append(
            f"transfer {side.txn_id} across buckets (bucket {side.bucket}):"
            f" {UNEVEN_FINDINGS[side.finding]}"
        )
    if len(report.uneven_sides) > _REPORT_LIMIT:
        lines.append(f"and {len(report.uneven_sides) - _REPORT_LIMIT} more transfers so")
    for counter in report.counters_behind_ledger:
        lines.append(
            f"txn:seq of bucket {counter.bucket} is {counter.txn_seq} but the ledger holds"
            f" transaction {counter.ledger_txn_id} of the same epoch: new transaction ids"
            " would collide with stored ones"
        )
    return "\n".join(lines)
