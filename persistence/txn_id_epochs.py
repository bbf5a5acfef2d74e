"""The epochs of transaction ids (service/domain/limits.py), handed out by PostgreSQL."""

from sqlalchemy import func, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import TxnIdEpoch, TxnIdEpochBucket
from service.domain.limits import TXN_IDS_PER_EPOCH


class TxnIdEpochsExhausted(Exception):
    """Every epoch of ids was handed out: no counter can start again, and money stops once
    the counters reach their epochs' ends (docs/scaling.md, "Id epochs")."""


async def take_txn_id_epoch(engine: AsyncEngine, at_least_id: int, bucket: int) -> int:
    """The next epoch whose start is at or above ``at_least_id`` (the ledger's largest
    id: an older version issued ids without taking epochs), for the counter of ``bucket``,
    committed as handed out, with the bucket it was handed to, before this returns: so no
    two callers, and no two Redis counters, ever get the same one, and none of its ids can
    be issued before its bucket is recorded. Raises TxnIdEpochsExhausted past the last
    epoch (the table's range check refuses it)."""
    lowest = -(-at_least_id // TXN_IDS_PER_EPOCH)  # the first epoch starting at or above it
    async with engine.begin() as connection:
        try:
            result = await connection.execute(
                update(TxnIdEpoch)
                .values(next_epoch=func.greatest(TxnIdEpoch.next_epoch, lowest) + 1)
                .returning(TxnIdEpoch.next_epoch - 1)
            )
        except IntegrityError as error:
            raise TxnIdEpochsExhausted(
                f"no epoch of transaction ids is left at or above {lowest}"
            ) from error
        epoch = int(result.scalar_one())
        await connection.execute(insert(TxnIdEpochBucket).values(epoch=epoch, bucket=bucket))
    return epoch
