"""``wallet rebuild``: reload Redis from the PostgreSQL ledger after Redis lost its data.

Run it with the API stopped (and the writer too, or idle): it overwrites balances with
what the ledger says, so a transaction made while it runs could be lost from a balance.

What it restores, in bounded batches (docs/holds.md gives the Redis shapes):

- the writer's consumer group (created at ``0`` if missing, so no entry is skipped);
- every PostgreSQL user's wallet, with the balance the ledger gives (deposits in +
  transfers and refunds in - transfers and refunds out), ``held_kopecks`` (the sum of the
  user's pending holds as payer: a ``holds`` row with no ``hold_events`` row) with the
  ``holds:{<user>}`` members that make it up, and ``incoming_kopecks`` (the sum of the
  pending holds toward the user), ``BATCH_SIZE`` users at a time, each wallet in one atomic
  step (``lua/restore_wallet.lua``);
- ``txn:seq`` raised to the start of a new epoch of ids (service/domain/limits.py), taken
  from PostgreSQL (persistence/txn_id_epochs.py) above every transaction and hold id the
  ledger holds, and never lowered, so new ids collide with no id ever issued: not with the
  ledger's (the writer inserts with ON CONFLICT DO NOTHING and would silently drop a new
  transaction that reused one), and not with those of the transactions acknowledged just
  before the loss and lost with Redis before the writer stored them, whose ids clients
  hold in their 201s. Every counter runs in an epoch handed out to it alone and never
  leaves it, so the new epoch is above every id issued before. ``lua/restore_wallet.lua``
  raises it in the same atomic step that restores each wallet, so no restored wallet is
  ever usable with a counter that is still too low;
- each bucket's clock ``txn:clock`` raised to the ledger's last instant, so that new
  transactions are stamped after the stored ones whatever the new host's clock says;
- every pending hold's ``hold:<id>`` hash and ``holds:due`` member, after every wallet
  (``lua/restore_hold.lua``), so that the sweeper never meets a due hold its payee's
  ``incoming_kopecks`` does not count. ``holds:due`` is emptied first: it is rebuilt from
  the ledger alone. A hold past its expiry with no end in the ledger is restored pending,
  as Redis had it: expired all the same (every script compares the time), and released
  by the next spending script or the sweeper, which records its expiry. A hold whose
  expiry the ledger has (the payer's side released by a spending script) but which the
  sweeper had not yet taken off ``holds:due`` is not restored: its payee's
  ``incoming_kopecks`` no longer counts it, as after the sweep;
- every refunded total ``refunded:{<refunder>}:<txn_id>``: the sum of the refunds with
  that ``refund_of`` (no TTL, as refund.lua keeps it);
- the idempotency records of the operations accepted in the last ``idempotency_ttl_s``
  seconds (service/ledger/rebuild_keys.py).

It refuses (``RebuildRefused``) while Redis holds stream entries that may not be in the
ledger yet (the writer's unpersisted tail is not empty): the balances would miss those
transactions. Let the writer drain them first.

Transfers across buckets (docs/scaling.md): balances count every side the ledger holds;
the Idempotency-Keys of the transfers across buckets come back with the others; then every
transfer the ledger holds half-way is put back and ended at once, settled or voided
(service/ledger/rebuild_crossings.py).

Not restored: sessions (users log in again), login throttling counters, the records of
refused requests (only accepted operations are in the ledger), request tokens
(``req:``: a lost reply from before the loss answers outcome_unknown; its retry with the
key replays), and the hashes of holds that have ended (reads and retries find them in the
ledger, as after ``hold_retention_s``). Redis wallets without a PostgreSQL user are left
alone; ``wallet reconcile`` reports them. Keys of a Redis that was not empty (``hold:``,
``refunded:``) that the ledger does not know are left as they are; reconcile reports
a refunded total the ledger does not have.

Rebuilding is idempotent: after an interruption, run it again.
"""

import logging
import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import (
    LedgerHold,
    LedgerHoldEvent,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from persistence.txn_id_epochs import take_txn_id_epoch
from service.domain.amounts import MAX_BALANCE_KOPECKS
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.times import us_from_datetime
from service.ledger.hold_totals import (
    PendingHold,
    incoming_of_payees,
    last_stream_entry_id,
    pending_holds_of_payers,
    pending_holds_page,
)
from service.ledger.id_counter import ledger_last_id, restart_counter_set_aside
from service.ledger.rebuild_crossings import (
    complete_transfers_half_way,
    forget_transfers_in_flight,
    half_way_transfers,
)
from service.ledger.rebuild_errors import LedgerInconsistent, RebuildRefused
from service.ledger.rebuild_keys import restore_idempotency_records
from service.ledger.reconcile import ledger_balances, user_id_batches
from service.ledger.refund_totals import refunded_totals_page
from service.redis import keyspace
from service.redis.crossing import CrossingLegs
from service.redis.money import new_request_token
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.stream_tail import unpersisted_tail
from service.redis.streams import ensure_consumer_group, stream_id
from service.redis.types import RedisClient
from service.settings import Settings

BATCH_SIZE = 1000
T = LedgerTransaction
H = LedgerHold
E = LedgerHoldEvent
R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd
DEFAULT_HOLD_RETENTION_S = cast(int, Settings.model_fields["hold_retention_s"].default)

logger = logging.getLogger("wallet.rebuild")


@dataclass(frozen=True, slots=True)
class RebuildReport:
    users: int  # wallets written, one per PostgreSQL user
    wallets_created: int
    wallets_updated: int  # existed with another balance, held or incoming
    idempotency_keys_restored: int
    idempotency_keys_kept: int  # Redis still held a record under the key
    ledger_last_txn_id: int  # the largest id in the ledger (transactions, holds, transfers)
    # Per bucket, in bucket order: the epoch taken for its ids from now on, and its counter
    # after the rebuild (the start of that epoch, or a live counter above it).
    txn_id_epochs: tuple[int, ...]
    txn_seqs: tuple[int, ...]
    holds_restored: int = 0  # pending holds put back
    # Transfers across buckets the ledger held half-way, put back and ended (stuck: left
    # reserved for an operator, service/redis/crossing.py ReservationStuck).
    transfers_settled: int = 0
    transfers_voided: int = 0
    transfers_stuck: int = 0
    refunded_totals_restored: int = 0
    # The ledger's fingerprint is none the live script could have recorded for its row.
    idempotency_keys_skipped: int = 0


async def _refuse_over_unpersisted_entries(redis: RedisClient, bucket: int) -> None:
    tail = await unpersisted_tail(redis, bucket, max_entries=1)
    if not tail.empty:
        first = tail.describe_first()
        more = " and later ones" if tail.overflow else ""
        raise RebuildRefused(
            f"Redis still holds {first}{more} in {keyspace.txn_stream(bucket)} that may"
            " not be in the ledger: run the writer until it has drained the stream, then"
            " rebuild again. Nothing was changed."
        )


async def rebuild(
    redis: RedisClient,
    engine: AsyncEngine,
    idempotency_ttl_s: int,
    hold_retention_s: int = DEFAULT_HOLD_RETENTION_S,
) -> RebuildReport:
    """Reloads wallets, holds, refunded totals, txn:seq, recent idempotency records and the
    consumer group from the ledger; see the module docstring. Raises RebuildRefused before
    writing anything when Redis holds stream entries that may not be in the ledger."""
    if await redis.exists(keyspace.LEGACY_TXN_STREAM):
        raise RebuildRefused(
            f"Redis still holds {keyspace.LEGACY_TXN_STREAM}, the stream of a version before"
            " buckets, which may hold transactions that are not in the ledger: run that"
            " version's writer until `wallet reconcile` is clean, delete the key, then rebuild"
            " again. Nothing was changed."
        )
    buckets = list(keyspace.all_buckets())
    for bucket in buckets:
        await _refuse_over_unpersisted_entries(redis, bucket)
    half_way = await half_way_transfers(engine)
    last_id = await ledger_last_id(engine)
    last_instant_us = await _ledger_last_instant_us(engine)
    epochs: list[int] = []
    for bucket in buckets:
        await ensure_consumer_group(redis, bucket)
        await _continue_stream_ids(redis, engine, bucket)
        await _raise_clock(redis, bucket, last_instant_us)
        epochs.append(await take_txn_id_epoch(engine, at_least_id=last_id, bucket=bucket))
        # holds:due comes back from the ledger alone, after the wallets (restore_hold.lua).
        await redis.delete(keyspace.holds_due(bucket))
        await forget_transfers_in_flight(redis, bucket)
    epoch_starts = [epoch * TXN_IDS_PER_EPOCH for epoch in epochs]
    outcomes = await _restore_wallets(redis, engine, epoch_starts)
    holds = await _restore_pending_holds(redis, engine, hold_retention_s)
    refunded = await _restore_refunded_totals(redis, engine)
    restored, kept, skipped = await restore_idempotency_records(redis, engine, idempotency_ttl_s)
    # After the keys: a void forgets its transfer's key, which must not come back after it.
    completed = await complete_transfers_half_way(redis, engine, half_way)
    # restore_wallet raised each counter with every user of its bucket. A bucket with no
    # user has no transaction either (the ledger's rows name users): its counter is
    # started, if missing.
    seqs: list[int] = []
    for bucket in buckets:
        await redis.set(keyspace.txn_seq(bucket), epoch_starts[bucket], nx=True)
        seqs.append(int(cast(bytes | None, await redis.get(keyspace.txn_seq(bucket))) or 0))
    return RebuildReport(
        users=sum(outcomes.values()),
        wallets_created=outcomes["created"],
        wallets_updated=outcomes["updated"],
        idempotency_keys_restored=restored,
        idempotency_keys_kept=kept,
        ledger_last_txn_id=last_id,
        txn_id_epochs=tuple(epochs),
        txn_seqs=tuple(seqs),
        holds_restored=holds,
        transfers_settled=completed.settled,
        transfers_voided=completed.voided,
        transfers_stuck=completed.stuck,
        refunded_totals_restored=refunded,
        idempotency_keys_skipped=skipped,
    )


async def _continue_stream_ids(redis: RedisClient, engine: AsyncEngine, bucket: int) -> None:
    """Raises the bucket's stream's last id to the largest the ledger holds, so that every entry
    from now on is above every stored one, whatever the clock did: `wallet reconcile`
    reads the ledger as of a stream entry id (service/ledger/hold_totals.py), and a new
    stream would otherwise start below the stored entries (at 0-0, until its first entry)."""
    async with engine.connect() as connection:
        stored = await last_stream_entry_id(connection)
    stream = keyspace.txn_stream(bucket)
    info = await redis.xinfo_stream(stream)
    current = stream_id(cast(bytes, info["last-generated-id"]))
    if stored is not None and stored > current:
        async with redis.pipeline(transaction=False) as pipe:  # (no typed XSETID method)
            pipe.execute_command("XSETID", stream, f"{stored[0]}-{stored[1]}")
            await pipe.execute()


async def _ledger_last_instant_us(engine: AsyncEngine) -> int:
    """The last instant the ledger holds (0 for none): a scan of each table, as the rest of
    the rebuild does."""
    async with engine.connect() as connection:
        instants = [
            (await connection.execute(select(func.max(column)))).scalar()
            for column in (T.created_at, H.created_at, E.at, R.created_at, C.credited_at, V.at)
        ]
    return max((us_from_datetime(at) for at in instants if at is not None), default=0)


async def _raise_clock(redis: RedisClient, bucket: int, floor_us: int) -> None:
    """Raises the bucket's clock to ``floor_us``, so that the scripts stamp every transaction
    from now on after every stored one, even on a host whose clock is behind the lost one's
    (lua/includes/money_frame.lua). Read, then written: the API is stopped."""
    clock = keyspace.txn_clock(bucket)
    if floor_us > int(cast(bytes | None, await redis.get(clock)) or 0):
        await redis.set(clock, floor_us)


async def _restore_wallets(
    redis: RedisClient, engine: AsyncEngine, epoch_starts: list[int]
) -> dict[str, int]:
    restore_wallet = LuaScript(redis, "restore_wallet")
    outcomes = {"created": 0, "updated": 0, "unchanged": 0}
    async for user_ids in user_id_batches(engine, BATCH_SIZE):
        async with engine.connect() as connection:
            balances = await ledger_balances(connection, user_ids)
            holds = await pending_holds_of_payers(connection, user_ids)
            incoming = await incoming_of_payees(connection, user_ids)
        calls: list[tuple[list[str], list[str]]] = []
        for user_id in user_ids:
            kopecks = balances[user_id]
            held = sum(hold.amount_kopecks for hold in holds[user_id])
            if not 0 <= held <= kopecks <= MAX_BALANCE_KOPECKS - incoming[user_id]:
                raise LedgerInconsistent(
                    f"the ledger gives user {user_id} a balance of {kopecks} kopecks with"
                    f" {held} held and {incoming[user_id]} incoming: no wallet holds that"
                    f" (0 <= held <= balance, balance + incoming <= {MAX_BALANCE_KOPECKS})"
                )
            bucket = keyspace.bucket_of(user_id)
            keys = [
                keyspace.txn_seq(bucket),
                keyspace.user(user_id),
                keyspace.pending_holds(user_id),
            ]
            args = [
                str(user_id),
                str(kopecks),
                str(epoch_starts[bucket]),
                str(held),
                str(incoming[user_id]),
            ]
            for hold in holds[user_id]:
                args += [
                    str(hold.hold_id),
                    str(hold.to_user_id),
                    str(hold.amount_kopecks),
                    str(hold.expires_at_us),
                ]
            calls.append((keys, args))
        replies = cast(list[list[bytes]], await restore_wallet.call_many(calls))
        for reply in replies:
            outcome = reply[0].decode()
            if outcome not in outcomes:
                raise ScriptArgumentRejected(f"restore_wallet: {outcome}")
            outcomes[outcome] += 1
    return outcomes


async def _restore_pending_holds(redis: RedisClient, engine: AsyncEngine, retention_s: int) -> int:
    """Puts the ledger's pending holds back; a hold whose payee is in another bucket with
    its expectation there, made again under a new token for the rest of its life (the
    payee's restored incoming counts no such hold: service/ledger/hold_totals.py)."""
    restore_hold = LuaScript(redis, "restore_hold")
    legs = CrossingLegs(redis)
    restored, after = 0, 0
    while True:
        async with engine.connect() as connection:
            holds = await pending_holds_page(connection, after, BATCH_SIZE)
        if not holds:
            return restored
        tokens = {
            hold.hold_id: new_request_token()
            for hold in holds
            if not keyspace.same_bucket(hold.from_user_id, hold.to_user_id)
        }
        calls = [_restore_hold_call(hold, retention_s, tokens.get(hold.hold_id)) for hold in holds]
        for hold, reply in zip(
            holds, cast(list[list[bytes]], await restore_hold.call_many(calls)), strict=True
        ):
            if reply[0] != b"restored":
                raise ScriptArgumentRejected(f"restore_hold: {reply[0]!r} for hold {hold.hold_id}")
        for hold in holds:
            token = tokens.get(hold.hold_id)
            if token is None:
                continue
            life_us = max(0, hold.expires_at_us - int(time.time() * 1_000_000))
            verdict = await legs.expect(
                hold.from_user_id,
                hold.to_user_id,
                hold.amount_kopecks,
                token,
                hold_expires_in_s=-(-life_us // 1_000_000),
            )
            if verdict != "expected":
                raise ScriptArgumentRejected(f"transfer_expect of hold {hold.hold_id}: {verdict}")
        restored += len(holds)
        after = holds[-1].hold_id


def _restore_hold_call(
    hold: PendingHold, retention_s: int, token: str | None
) -> tuple[list[str], list[str]]:
    bucket = keyspace.bucket_of(hold.from_user_id)  # a hold is in its payer's bucket
    keys = [keyspace.hold(bucket, hold.hold_id), keyspace.holds_due(bucket)]
    if token is not None:
        keys.append(keyspace.request_outcome(hold.from_user_id, token))
    args = [
        str(hold.hold_id),
        str(hold.from_user_id),
        str(hold.to_user_id),
        str(hold.amount_kopecks),
        str(hold.created_at_us),
        str(hold.expires_at_us),
        str(retention_s),
        token or "",
    ]
    return keys, args


async def _restore_refunded_totals(redis: RedisClient, engine: AsyncEngine) -> int:
    """``refunded:{<refunder>}:<txn_id>`` = the sum of the refunds of that transfer, without
    TTL, as refund.lua keeps it. A total above the transfer (which refund.lua never lets
    happen) is written as the ledger has it; reconcile reports it."""
    restored, after = 0, 0
    while True:
        async with engine.connect() as connection:
            totals = await refunded_totals_page(connection, after, BATCH_SIZE)
        if not totals:
            return restored
        async with redis.pipeline(transaction=False) as pipe:
            for total in totals:
                pipe.set(keyspace.refunded(total.refunder, total.txn_id), total.refunded_kopecks)
            await pipe.execute()
        restored += len(totals)
        after = totals[-1].txn_id


async def ensure_transaction_counter(redis: RedisClient, engine: AsyncEngine) -> bool:
    """At start: a system with an empty ledger starts its counter at the start of a new
    epoch of ids (epoch 0 for a new system; a later one if ids were issued and lost before
    any reached the ledger). A counter set aside because the primary changed starts again
    in a new epoch (service/ledger/id_counter.py). A missing counter with transactions in
    the ledger otherwise means Redis lost its data: the counter stays missing, so the money
    scripts refuse to move money (the balances are gone too) until `wallet rebuild`. True
    when every bucket's counter is in place."""
    in_place = True
    for bucket in keyspace.all_buckets():
        in_place &= await _ensure_bucket_counter(redis, engine, bucket)
    return in_place


async def _ensure_bucket_counter(redis: RedisClient, engine: AsyncEngine, bucket: int) -> bool:
    if await redis.exists(keyspace.txn_seq(bucket)):
        return True
    if await restart_counter_set_aside(redis, engine, bucket) is not None:
        return True
    async with engine.connect() as connection:
        last_id = (await connection.execute(select(func.max(T.id)))).scalar()
    if last_id is not None:
        return False
    epoch = await take_txn_id_epoch(engine, at_least_id=0, bucket=bucket)
    # Two processes starting at once each take an epoch; one counter wins, the other epoch
    # is never used. Ids are unique, not dense.
    await redis.set(keyspace.txn_seq(bucket), epoch * TXN_IDS_PER_EPOCH, nx=True)
    return True


def format_report(report: RebuildReport) -> str:
    return "\n".join(
        [
            f"rebuild done: {report.users} wallets restored ({report.wallets_created} created,"
            f" {report.wallets_updated} corrected to the ledger)",
            f"holds: {report.holds_restored} pending holds restored; refunded totals:"
            f" {report.refunded_totals_restored} restored; transfers across buckets left"
            f" half-way: {report.transfers_settled} settled, {report.transfers_voided} voided"
            + (
                f", {report.transfers_stuck} LEFT IN TRANSIT for an operator (see the log)"
                if report.transfers_stuck
                else ""
            ),
            f"idempotency records: {report.idempotency_keys_restored} restored,"
            f" {report.idempotency_keys_kept} already in Redis (kept)"
            + (
                f", {report.idempotency_keys_skipped} NOT restored (the ledger's rows do not"
                " give the record: see the log)"
                if report.idempotency_keys_skipped
                else ""
            ),
            f"transaction id counters (per bucket): {_listed(report.txn_seqs)}; new ids go on"
            f" from epochs {_listed(report.txn_id_epochs)}, above every id issued before;"
            f" the ledger's last id is {report.ledger_last_txn_id}",
        ]
    )


def _listed(numbers: tuple[int, ...]) -> str:
    return ", ".join(str(n) for n in numbers)
