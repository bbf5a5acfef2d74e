"""``wallet rebuild``: reload Redis from the PostgreSQL ledger after Redis lost its data.

Run it with the API stopped (and the writer too, or idle): it overwrites balances with
what the ledger says, so a transaction made while it runs could be lost from a balance.

What it restores, in bounded batches:

- the writer's consumer group (created at ``0`` if missing, so no entry is skipped);
- every PostgreSQL user's wallet, with the balance the ledger gives (deposits in +
  transfers in - transfers out), ``BATCH_SIZE`` users at a time;
- ``txn:seq`` raised to the start of a new epoch of ids (service/domain/limits.py), taken
  from PostgreSQL (persistence/txn_id_epochs.py) and never lowered, so new ids collide with
  no id ever issued: not with the ledger's (the writer inserts with ON CONFLICT DO NOTHING
  and would silently drop a new transaction that reused one), and not with those of the
  transactions acknowledged just before the loss and lost with Redis before the writer
  stored them, whose ids clients hold in their 201s. Every counter runs in an epoch handed
  out to it alone and never leaves it, so the new epoch is above every id issued before.
  ``lua/restore_wallet.lua`` raises it in the same atomic step that restores each wallet,
  so no restored wallet is ever usable with a counter that is still too low;
- the idempotency records of the accepted transactions of the last ``idempotency_ttl_s``
  seconds, each expiring when the original would have (``lua/restore_idempotency.lua``);
  a record Redis still holds is kept, and of two ledger rows with one key the newer wins.

It refuses (``RebuildRefused``) while Redis holds stream entries that may not be in the
ledger yet (the writer's unpersisted tail is not empty): the balances would miss those
transactions. Let the writer drain them first.

Not restored: sessions (users log in again), login throttling counters, and the records of
refused requests (only accepted transactions are in the ledger). Redis wallets without a
PostgreSQL user are left alone; ``wallet reconcile`` reports them.

Rebuilding is idempotent: after an interruption, run it again.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from redis.asyncio import Redis
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerTransaction
from persistence.txn_id_epochs import take_txn_id_epoch
from service.domain.amounts import MAX_BALANCE_KOPECKS
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.domain.times import datetime_from_us, us_from_datetime
from service.ledger.reconcile import ledger_balances, user_id_batches
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.stream_tail import unpersisted_tail
from service.redis.streams import ensure_consumer_group

BATCH_SIZE = 1000
T = LedgerTransaction


class RebuildRefused(Exception):
    """Rebuilding now would lose money: Redis holds transactions that may not be in the
    ledger. Nothing was written."""


class LedgerInconsistent(Exception):
    """The ledger gives a balance no wallet can hold; wallets before it were restored."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    users: int  # wallets written, one per PostgreSQL user
    wallets_created: int
    wallets_updated: int  # existed with another balance
    idempotency_keys_restored: int
    idempotency_keys_kept: int  # Redis still held a record under the key
    ledger_last_txn_id: int
    txn_id_epoch: int  # the epoch taken for the ids from now on
    txn_seq: int  # after the rebuild: the start of that epoch (or a live counter above it)


async def _refuse_over_unpersisted_entries(redis: Redis) -> None:
    tail = await unpersisted_tail(redis, max_entries=1)
    if not tail.empty:
        first = tail.describe_first()
        more = " and later ones" if tail.overflow else ""
        raise RebuildRefused(
            f"Redis still holds {first}{more} in {keyspace.TXN_STREAM} that may"
            " not be in the ledger: run the writer until it has drained the stream, then"
            " rebuild again. Nothing was changed."
        )


async def rebuild(redis: Redis, engine: AsyncEngine, idempotency_ttl_s: int) -> RebuildReport:
    """Reloads wallets, txn:seq, recent idempotency records and the consumer group from
    the ledger; see the module docstring. Raises RebuildRefused before writing anything
    when Redis holds stream entries that may not be in the ledger."""
    await _refuse_over_unpersisted_entries(redis)
    async with engine.connect() as connection:
        last_id = int((await connection.execute(select(func.max(T.id)))).scalar() or 0)
    await ensure_consumer_group(redis)
    epoch = await take_txn_id_epoch(engine, at_least_id=last_id)
    epoch_start = epoch * TXN_IDS_PER_EPOCH

    restore_wallet = LuaScript(redis, "restore_wallet")
    outcomes = {"created": 0, "updated": 0, "unchanged": 0}
    async for user_ids in user_id_batches(engine, BATCH_SIZE):
        async with engine.connect() as connection:
            balances = await ledger_balances(connection, user_ids)
        calls: list[tuple[list[str], list[str]]] = []
        for user_id in user_ids:
            kopecks = balances[user_id]
            if not 0 <= kopecks <= MAX_BALANCE_KOPECKS:
                raise LedgerInconsistent(
                    f"the ledger gives user {user_id} a balance of {kopecks} kopecks,"
                    f" outside 0..{MAX_BALANCE_KOPECKS}"
                )
            keys = [keyspace.TXN_SEQ, keyspace.user(user_id)]
            calls.append((keys, [str(user_id), str(kopecks), str(epoch_start)]))
        replies = cast(list[list[bytes]], await restore_wallet.call_many(calls))
        for reply in replies:
            outcome = reply[0].decode()
            if outcome not in outcomes:
                raise ScriptArgumentRejected(f"restore_wallet: {outcome}")
            outcomes[outcome] += 1

    restored, kept = await _restore_idempotency_records(redis, engine, idempotency_ttl_s)
    # restore_wallet raised the counter with every user. With no user there is no
    # transaction either (the ledger's rows name users): it is started, if missing.
    await redis.set(keyspace.TXN_SEQ, epoch_start, nx=True)
    seq = int(cast(bytes | None, await redis.get(keyspace.TXN_SEQ)) or 0)
    return RebuildReport(
        users=sum(outcomes.values()),
        wallets_created=outcomes["created"],
        wallets_updated=outcomes["updated"],
        idempotency_keys_restored=restored,
        idempotency_keys_kept=kept,
        ledger_last_txn_id=last_id,
        txn_id_epoch=epoch,
        txn_seq=seq,
    )


async def _restore_idempotency_records(
    redis: Redis, engine: AsyncEngine, idempotency_ttl_s: int
) -> tuple[int, int]:
    """Newest first (keyset on created_at, id), so that of two rows with one key the
    newer is written and the older finds it there."""
    restore = LuaScript(redis, "restore_idempotency")
    # Redis's clock: the one that stamped created_at and that expires the records.
    seconds, micros = await redis.time()
    cutoff = datetime_from_us(seconds * 1_000_000 + micros) - timedelta(seconds=idempotency_ttl_s)
    ttl = str(idempotency_ttl_s)
    restored = kept = 0
    after: tuple[datetime, int] | None = None
    while True:
        query = select(
            T.id,
            T.kind,
            T.from_user_id,
            T.to_user_id,
            T.amount_kopecks,
            T.created_at,
            T.idempotency_key,
        ).where(T.idempotency_key.is_not(None), T.created_at > cutoff)
        if after is not None:
            query = query.where(tuple_(T.created_at, T.id) < tuple_(*after))
        query = query.order_by(T.created_at.desc(), T.id.desc()).limit(BATCH_SIZE)
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        if not rows:
            return restored, kept
        calls = []
        for row in rows:
            key = cast(str, row.idempotency_key)
            owner = row.to_user_id if row.kind == "deposit" else cast(int, row.from_user_id)
            args = [
                str(owner),
                key,
                row.kind,
                str(row.to_user_id),
                str(row.amount_kopecks),
                str(row.id),
                str(us_from_datetime(row.created_at)),
                ttl,
            ]
            calls.append(([keyspace.idempotency(owner, key)], args))
        replies = cast(list[list[bytes]], await restore.call_many(calls))
        for row, reply in zip(rows, replies, strict=True):
            outcome = reply[0].decode()
            if outcome == "restored":
                restored += 1
            elif outcome == "exists":
                kept += 1
            elif outcome != "expired":
                raise ScriptArgumentRejected(f"restore_idempotency: {outcome} for txn {row.id}")
        after = (rows[-1].created_at, rows[-1].id)


async def ensure_transaction_counter(redis: Redis, engine: AsyncEngine) -> bool:
    """At start: a system with an empty ledger starts its counter at the start of a new
    epoch of ids (epoch 0 for a new system; a later one if ids were issued and lost before
    any reached the ledger). A missing counter with transactions in the ledger means Redis
    lost its data: the counter stays missing, so the money scripts refuse to move money
    (the balances are gone too) until `wallet rebuild`. True when the counter is in place."""
    if await redis.exists(keyspace.TXN_SEQ):
        return True
    async with engine.connect() as connection:
        last_id = (await connection.execute(select(func.max(T.id)))).scalar()
    if last_id is not None:
        return False
    epoch = await take_txn_id_epoch(engine, at_least_id=0)
    # Two processes starting at once each take an epoch; one counter wins, the other epoch
    # is never used. Ids are unique, not dense.
    await redis.set(keyspace.TXN_SEQ, epoch * TXN_IDS_PER_EPOCH, nx=True)
    return True


def format_report(report: RebuildReport) -> str:
    return "\n".join(
        [
            f"rebuild done: {report.users} wallets restored ({report.wallets_created} created,"
            f" {report.wallets_updated} corrected to the ledger)",
            f"idempotency records: {report.idempotency_keys_restored} restored,"
            f" {report.idempotency_keys_kept} already in Redis (kept)",
            f"txn:seq is {report.txn_seq}: new ids go on from epoch {report.txn_id_epoch},"
            f" above every id issued before; the ledger's last transaction is"
            f" {report.ledger_last_txn_id}",
        ]
    )
