"""The transaction id counter after the primary changed (Redis with replicas and Sentinel),
and near the end of its epoch.

A replica promoted by a failover may lack the last transactions the old primary
acknowledged (always with WALLET_REDIS_MIN_REPLICAS=0; with N ≥ 1 those whose replicas
did not confirm), and its ``txn:seq`` is then behind ids already given to them. Every new
connection to a primary checks the counter's replication history
(lua/follow_primary.lua, service/redis/sentinel.py): on a primary with another history it
sets the counter aside, and the money scripts refuse to move money (503
wallet_unavailable) while ``txn:seq`` is missing.

The writer (``run_counter_keeper``, beside the stream writer and the hold sweeper) and
the API at start (``ensure_transaction_counter``) then start it again as ``wallet
rebuild`` does: at the beginning of a new epoch of ids taken from PostgreSQL
(persistence/txn_id_epochs.py), above every id any counter ever issued. The balances stay
as the new primary has them. No id is issued twice; the cost is an epoch per change of
primary (a failover, or a restart of the primary, which starts a new replication history
too).

The keeper also moves a counter that comes within ``EPOCH_ROLLOVER_MARGIN_IDS`` of its
epoch's end to the start of a new epoch (lua/advance_epoch.lua), while money goes on
moving; otherwise the scripts would refuse money (epoch_exhausted) at the epoch's last id.
"""

import asyncio
import contextlib
import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.models import (
    LedgerHold,
    LedgerTransaction,
    LedgerTransferCredit,
    LedgerTransferEnd,
    LedgerTransferReservation,
)
from persistence.txn_id_epochs import TxnIdEpochsExhausted, take_txn_id_epoch
from service.domain.limits import EPOCH_ROLLOVER_MARGIN_IDS, TXN_IDS_PER_EPOCH
from service.domain.times import us_from_datetime
from service.ledger.crossing_totals import VOIDED
from service.outages import is_outage
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

log = logging.getLogger("wallet.id_counter")

T = LedgerTransaction
H = LedgerHold
R = LedgerTransferReservation
C = LedgerTransferCredit
V = LedgerTransferEnd

# How often the writer looks for a counter set aside: money is refused until it is started
# again, so within about this long of the first connection to a new primary.
KEEPER_INTERVAL_S = 0.5


# Every id the counters gave that the ledger holds: transactions, holds and transfers
# across buckets (their reservations: a credit and an end carry the reservation's id).
LEDGER_ID_COLUMNS = (LedgerTransaction.id, LedgerHold.id, LedgerTransferReservation.id)


async def ledger_last_id(engine: AsyncEngine) -> int:
    """The largest id the ledger holds (0 for none)."""
    async with engine.connect() as connection:
        last = [
            (await connection.execute(select(func.max(id_)))).scalar() for id_ in LEDGER_ID_COLUMNS
        ]
    return max(int(id_ or 0) for id_ in last)


async def _last_stamp(connection: AsyncConnection, bucket: int, epoch: int) -> datetime | None:
    """The last stamp the ledger holds of the bucket's records, which the clock must not go
    below. Records stamped as their id was issued (transactions, holds made, reservations):
    the newest of the counter's epoch, by id (within a bucket stamps increase with ids, and
    the epoch's ids are the bucket's: index range scans of the keys). Then, newer than that,
    records stamped later than their id: the voids of the bucket's payers (which may undo a
    reservation of an earlier epoch; the voids' partial index) and the credits of its payees
    (which carry other buckets' ids; the credits by instant). Hold events are not counted
    yet (no index finds the newest of a bucket)."""
    in_epoch = (epoch * TXN_IDS_PER_EPOCH, (epoch + 1) * TXN_IDS_PER_EPOCH)
    found: list[datetime | None] = []
    for stamp, id_ in ((T.created_at, T.id), (H.created_at, H.id), (R.created_at, R.id)):
        found.append(
            await connection.scalar(
                select(stamp)
                .where(id_ > in_epoch[0], id_ < in_epoch[1])
                .order_by(id_.desc())
                .limit(1)
            )
        )
    floor = max((stamp for stamp in found if stamp is not None), default=None)
    if keyspace.BUCKETS > 1:
        later = () if floor is None else (V.at > floor,)
        found.append(
            await connection.scalar(
                select(func.max(V.at)).where(
                    VOIDED, V.from_user_id % keyspace.BUCKETS == bucket, *later
                )
            )
        )
        later = () if floor is None else (C.credited_at > floor,)
        found.append(
            await connection.scalar(
                select(C.credited_at)
                .where(C.to_user_id % keyspace.BUCKETS == bucket, *later)
                .order_by(C.credited_at.desc())
                .limit(1)
            )
        )
    return max((stamp for stamp in found if stamp is not None), default=None)


async def restart_counter_set_aside(
    redis: RedisClient, engine: AsyncEngine, bucket: int
) -> int | None:
    """Starts the bucket's counter, set aside, again in a new epoch; the new counter, or
    None when it is not set aside (or another process started it meanwhile)."""
    raw = await redis.get(keyspace.txn_seq_behind(bucket))
    if raw is None:
        return None
    behind = int(raw)
    epoch_behind = behind // TXN_IDS_PER_EPOCH
    last_id = await ledger_last_id(engine)
    async with engine.connect() as connection:
        clock_floor = await _last_stamp(connection, bucket, epoch_behind)
    # Strictly above the counter set aside, and above the ledger (ids of an older version
    # were issued without epochs).
    at_least_id = max(behind + 1, last_id)
    epoch = await take_txn_id_epoch(engine, at_least_id=at_least_id, bucket=bucket)
    epoch_start = epoch * TXN_IDS_PER_EPOCH
    restart = LuaScript(redis, "restart_counter")
    keys = [keyspace.txn_seq(bucket), keyspace.txn_seq_behind(bucket), keyspace.txn_clock(bucket)]
    clock_floor_us = 0 if clock_floor is None else us_from_datetime(clock_floor)
    outcome = (await restart(keys=keys, args=[str(epoch_start), str(clock_floor_us)])).decode()
    if outcome in ("none", "already"):
        return None  # another process did it; the epoch taken goes unused
    if outcome != "restarted":
        raise ScriptArgumentRejected(outcome)
    log.warning(
        "the transaction id counter set aside at %d (the primary changed) starts again at"
        " %d (epoch %d)",
        behind,
        epoch_start,
        epoch,
    )
    return epoch_start


async def advance_counter_near_its_epochs_end(
    redis: RedisClient, engine: AsyncEngine, bucket: int
) -> int | None:
    """Moves the bucket's counter to a new epoch when it is within EPOCH_ROLLOVER_MARGIN_IDS
    of its epoch's last id; the new counter, or None when it was not moved (not near the
    end, missing, or moved by another process meanwhile)."""
    raw = await redis.get(keyspace.txn_seq(bucket))
    if raw is None:
        return None
    seq = int(raw)
    if TXN_IDS_PER_EPOCH - 1 - seq % TXN_IDS_PER_EPOCH > EPOCH_ROLLOVER_MARGIN_IDS:
        return None
    epoch = await take_txn_id_epoch(engine, at_least_id=seq + 1, bucket=bucket)
    epoch_start = epoch * TXN_IDS_PER_EPOCH
    advance = LuaScript(redis, "advance_epoch")
    outcome = (
        await advance(
            keys=[keyspace.txn_seq(bucket)], args=[str(epoch_start), str(EPOCH_ROLLOVER_MARGIN_IDS)]
        )
    ).decode()
    if outcome in ("not_near", "missing"):
        return None  # another process moved it, or the primary changed; the epoch goes unused
    if outcome != "advanced":
        raise ScriptArgumentRejected(outcome)
    log.info("the transaction id counter at %d moves to epoch %d", seq, epoch)
    return epoch_start


async def run_counter_keeper(
    redis: RedisClient, engine: AsyncEngine, bucket: int, interval_s: float, stop: asyncio.Event
) -> None:
    """Starts the bucket's counter again whenever it is set aside, and moves it to a new
    epoch near its epoch's end, until ``stop`` is set. Outages are logged and retried at the
    next pass; so is running out of epochs, which needs an operator but must not stop the
    writer's drain; anything else is a bug and ends it."""
    while not stop.is_set():
        try:
            await restart_counter_set_aside(redis, engine, bucket)
            await advance_counter_near_its_epochs_end(redis, engine, bucket)
        except TxnIdEpochsExhausted as exhausted:
            log.critical("the id counter of bucket %d cannot move on: %s", bucket, exhausted)
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("could not look after the id counter (%r); trying again", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
