"""The epochs of transaction ids (service/domain/limits.py), handed out by PostgreSQL."""

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import TxnIdEpoch
from service.domain.limits import TXN_IDS_PER_EPOCH


class TxnIdEpochsExhausted(Exception):
    """Every epoch of ids was handed out: no counter can start again, and money stops once
    the counters reach their epochs' ends (docs/scaling.md, "Id epochs")."""


async def take_txn_id_epoch(engine: AsyncEngine, at_least_id: int) -> int:
    """The next epoch whose start is at or above ``at_least_id`` (the ledger's largest
    id: an older version issued ids without taking epochs), committed as handed out before
    this returns, so no two callers, and no two Redis counters, ever get the same one.
    Raises TxnIdEpochsExhausted past the last epoch (the table's range check refuses it)."""
    lowest = -(-at_least_id // TXN_IDS_PER_EPOCH)  # the first epoch starting at or above it
    try:
        async with engine.begin() as connection:
            result = await connection.execute(
                update(TxnIdEpoch)
                .values(next_epoch=func.greatest(TxnIdEpoch.next_epoch, lowest) + 1)
                .returning(TxnIdEpoch.next_epoch - 1)
            )
            return int(result.scalar_one())
    except IntegrityError as error:
        raise TxnIdEpochsExhausted(
            f"no epoch of transaction ids is left at or above {lowest}"
        ) from error
