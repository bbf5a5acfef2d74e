"""The hold sweeper, run beside the stream writer (``run_writer_and_sweeper``, by `wallet
writer` and `wallet serve --embedded`, with the id counter's keeper of
service/ledger/id_counter.py and the recovery of transfers across buckets of
service/redis/crossing.py): every ``hold_sweep_interval_ms`` it marks up to
``hold_sweep_batch`` holds that have expired (lua/hold_expire.lua through
HoldScripts.sweep), at once again while a pass finds a full batch. A hold is expired from
``expires_at_us`` whether or not it was swept (docs/holds.md): the sweeper only releases
the payee's side, records the event and sets the status, so a late sweep costs nothing but
a stricter ceiling for the payee meanwhile.

Outages (service/outages.py) are logged and retried at the next pass; anything else is a
bug and ends the sweeper (or the recovery) with it, which stops the writer too.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from service.ledger.id_counter import KEEPER_INTERVAL_S, run_counter_keeper
from service.ledger.writer import StreamWriter, WriterStats
from service.outages import is_outage
from service.redis import keyspace
from service.redis.crossing import RECOVERY_BATCH, RECOVERY_INTERVAL_S, CrossingLegs
from service.redis.holds import HoldScripts
from service.redis.types import RedisClient
from service.settings import Settings

log = logging.getLogger("wallet.hold_sweeper")


async def run_in_passes(
    work: Callable[[], Awaitable[int]],
    what: str,
    interval_s: float,
    batch: int,
    stop: asyncio.Event,
) -> None:
    """Runs one pass of ``work`` (which tells how many things it ended) every
    ``interval_s`` until ``stop`` is set, at once again after a pass of ``batch`` or more."""
    while not stop.is_set():
        try:
            ended = await work()
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("%s failed, retrying in %.1f s: %r", what, interval_s, error)
            ended = 0
        if ended:
            log.info("%s: %d ended", what, ended)
        if ended < batch:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


async def run_hold_sweeper(
    holds: HoldScripts, bucket: int, interval_s: float, batch: int, stop: asyncio.Event
) -> None:
    """Sweeps the bucket's holds until ``stop`` is set."""
    await run_in_passes(lambda: holds.sweep(bucket, batch), "hold sweep", interval_s, batch, stop)


async def run_crossing_recovery(legs: CrossingLegs, stop: asyncio.Event) -> None:
    """Ends the transfers across buckets that a crash left half-way, until ``stop`` is set.
    The deadlines are Redis's clock, read here on this host's: they lie far beyond a
    request's life, so clocks need only agree within that."""
    await run_in_passes(
        lambda: legs.recover(int(time.time() * 1_000_000)),
        "recovery of transfers across buckets",
        RECOVERY_INTERVAL_S,
        RECOVERY_BATCH,
        stop,
    )


async def run_writer_and_sweeper(
    settings: Settings,
    redis: RedisClient,
    engine: AsyncEngine,
    stop: asyncio.Event,
    stats: WriterStats | None = None,
) -> None:
    """For every bucket, the stream writer, the hold sweeper and the id counter's keeper,
    and the recovery of transfers across buckets, until ``stop`` is set. A task that fails for
    anything but an outage stops the others, and its error is raised. The writers count
    their work in ``stats`` when given (`wallet writer` serves them as metrics)."""
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
    tasks.append(asyncio.create_task(run_crossing_recovery(CrossingLegs(redis), stop)))
    for task in tasks:
        task.add_done_callback(lambda _: stop.set())
    try:
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
