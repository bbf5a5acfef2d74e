"""What a deployment is created with and may never change, recorded in PostgreSQL by the
first process to start: the number of buckets its money keys are spread over
(service/redis/keyspace.py; service/ledger/bucket_count.py checks it at every start)."""

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import Deployment


async def recorded_bucket_count(engine: AsyncEngine, buckets: int) -> int:
    """The bucket count the deployment was created with: ``buckets`` when this is the first
    process to start (it records it; of two starting at once, one does). Read first, so
    that every later start only reads (a database answering read-only is no obstacle)."""
    async with engine.connect() as connection:
        recorded = (await connection.execute(select(Deployment.buckets))).scalar_one_or_none()
    if recorded is not None:
        return int(recorded)
    async with engine.begin() as connection:
        await connection.execute(
            insert(Deployment).values(id=1, buckets=buckets).on_conflict_do_nothing()
        )
        return int((await connection.execute(select(Deployment.buckets))).scalar_one())
