"""The bucket whose counter issued a transaction or hold id, from the id alone: a payee in
one bucket finds a hold that lives in its payer's bucket (``hold:{b<p>}:<id>``) by its id.

A bucket's counter issues ids only within the epochs taken for it (lua/includes/
check_session.lua), and each epoch records the bucket it was taken for, committed before
any of its ids is issued (persistence/txn_id_epochs.py, table ``txn_id_epoch_buckets``).
"""

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import TxnIdEpochBucket
from service.domain.limits import TXN_IDS_PER_EPOCH
from service.redis import keyspace

log = logging.getLogger("wallet.id_buckets")

# Epochs remembered per process. A deployment takes a few per bucket and change of primary
# (docs/scaling.md, "Id epochs"), so the bound only keeps a pathological run from growing
# without end; past it the oldest remembered is forgotten, to be read again if asked.
MAX_CACHED_EPOCHS = 100_000


class IdBuckets:
    """Answers from process memory once an epoch's row was read: a row never changes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._bucket_of_epoch: dict[int, int] = {}

    async def bucket_of_id(self, txn_id: int) -> int | None:
        """The bucket whose counter issued ``txn_id``; None when no epoch recorded for a
        bucket of this deployment covers it (the id was never issued: its epoch's row is
        committed before any of its ids is)."""
        if keyspace.BUCKETS == 1:
            return 0  # the only counter; epochs before migration 0009 have no row
        epoch = txn_id // TXN_IDS_PER_EPOCH
        cached = self._bucket_of_epoch.get(epoch)
        if cached is not None:
            return cached
        # Every row at once: a deployment has few epochs, and a process then asks the
        # database again only for an epoch taken since.
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(TxnIdEpochBucket.epoch, TxnIdEpochBucket.bucket)
                .order_by(TxnIdEpochBucket.epoch.desc())
                .limit(MAX_CACHED_EPOCHS)
            )
            known = {int(row_epoch): int(row_bucket) for row_epoch, row_bucket in rows}
        for row_epoch, row_bucket in known.items():
            if row_bucket < keyspace.BUCKETS:
                self._remember(row_epoch, row_bucket)
        bucket = known.get(epoch)
        if bucket is None:
            return None
        if bucket >= keyspace.BUCKETS:
            log.error(
                "epoch %d of transaction ids is recorded for bucket %d, but the deployment"
                " has %d buckets",
                epoch,
                bucket,
                keyspace.BUCKETS,
            )
            return None
        return bucket

    def _remember(self, epoch: int, bucket: int) -> None:
        if epoch not in self._bucket_of_epoch and len(self._bucket_of_epoch) >= MAX_CACHED_EPOCHS:
            del self._bucket_of_epoch[next(iter(self._bucket_of_epoch))]  # the oldest read
        self._bucket_of_epoch[epoch] = bucket
