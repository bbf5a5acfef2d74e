"""The hold sweeper, run beside the stream writer (``run_writer_and_sweeper``, by `wallet
writer` and `wallet serve --embedded`, with the id counter's keeper of
service/ledger/id_counter.py): every ``hold_sweep_interval_ms`` it marks up to
``hold_sweep_batch`` holds that have expired (lua/hold_expire.lua through
HoldScripts.sweep), at once again while a pass finds a full batch. A hold is expired from
``expires_at_us`` whether or not it was swept (docs/holds.md): the sweeper only releases
the payee's side, records the event and sets the status, so a late sweep costs nothing but
a stricter ceiling for the payee meanwhile.

Outages (service/outages.py) are logged and retried at the next pass; anything else is a
bug and ends the sweeper with it, which stops the writer too.
"""

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger.id_counter import KEEPER_INTERVAL_S, run_counter_keeper
from service.ledger.writer import StreamWriter, WriterStats
from service.outages import is_outage
from service.redis import keyspace
from service.redis.holds import HoldScripts
from service.redis.types import RedisClient
from service.settings import Settings

log = logging.getLogger("wallet.hold_sweeper")


async def run_hold_sweeper(
    holds: HoldScripts, bucket: int, interval_s: float, batch: int, stop: asyncio.Event
) -> None:
    """Sweeps the bucket's holds until ``stop`` is set."""
    while not stop.is_set():
        try:
            marked = await holds.sweep(bucket, batch)
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("hold sweep failed, retrying in %.1f s: %r", interval_s, error)
            marked = 0
        if marked:
            log.info("marked %d expired holds", marked)
        if marked < batch:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


async def run_writer_and_sweeper(
    settings: Settings,
    redis: RedisClient,
    engine: AsyncEngine,
    stop: asyncio.Event,
    stats: WriterStats | None = None,
) -> None:
    """For every bucket, the stream writer, the hold sweeper and the id counter's keeper,
    until ``stop`` is set. A task that fails for anything but an outage stops the others,
    and its error is raised. The writers count their work in ``stats`` when given (`wallet
    writer` serves them as metrics)."""
    holds = HoldScripts(redis, settings)
    tasks = []
    for bucket in keyspace.all_buckets():
        tasks += [
            asyncio.create_task(StreamWriter(settings, redis, engine, bucket, stats).run(stop)),
            asyncio.create_task(
                run_hold_sweeper(
                    holds,
                    bucket,
                    settings.hold_sweep_interval_ms / 1000,
                    settings.hold_sweep_batch,
                    stop,
                )
            ),
            asyncio.create_task(run_counter_keeper(redis, engine, bucket, KEEPER_INTERVAL_S, stop)),
        ]
    for task in tasks:
        task.add_done_callback(lambda _: stop.set())
    try:
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
