"""The transaction id counter after the primary changed (Redis with replicas and Sentinel).

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
"""

import asyncio
import contextlib
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import LedgerHold, LedgerTransaction
from persistence.txn_id_epochs import take_txn_id_epoch
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.outages import is_outage
from service.redis import keyspace
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

log = logging.getLogger("wallet.id_counter")

# How often the writer looks for a counter set aside: money is refused until it is started
# again, so within about this long of the first connection to a new primary.
KEEPER_INTERVAL_S = 0.5


async def restart_counter_set_aside(
    redis: RedisClient, engine: AsyncEngine, bucket: int
) -> int | None:
    """Starts the bucket's counter, set aside, again in a new epoch; the new counter, or
    None when it is not set aside (or another process started it meanwhile)."""
    raw = await redis.get(keyspace.txn_seq_behind(bucket))
    if raw is None:
        return None
    behind = int(raw)
    async with engine.connect() as connection:
        last_txn = (await connection.execute(select(func.max(LedgerTransaction.id)))).scalar()
        last_hold = (await connection.execute(select(func.max(LedgerHold.id)))).scalar()
    # Strictly above the counter set aside, and above the ledger (ids of an older version
    # were issued without epochs).
    at_least_id = max(behind + 1, int(last_txn or 0), int(last_hold or 0))
    epoch = await take_txn_id_epoch(engine, at_least_id=at_least_id)
    epoch_start = epoch * TXN_IDS_PER_EPOCH
    restart = LuaScript(redis, "restart_counter")
    outcome = (
        await restart(
            keys=[keyspace.txn_seq(bucket), keyspace.txn_seq_behind(bucket)],
            args=[str(epoch_start)],
        )
    ).decode()
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


async def run_counter_keeper(
    redis: RedisClient, engine: AsyncEngine, bucket: int, interval_s: float, stop: asyncio.Event
) -> None:
    """Starts the bucket's counter again whenever it is set aside, until ``stop`` is set.
    Outages are logged and retried at the next pass; anything else is a bug and ends it."""
    while not stop.is_set():
        try:
            await restart_counter_set_aside(redis, engine, bucket)
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("could not look for a counter set aside (%r); trying again", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
