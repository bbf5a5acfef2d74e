"""The hold sweeper, run inside `wallet writer`: every ``hold_sweep_interval_ms`` it marks up
to ``hold_sweep_batch`` holds that have expired (lua/hold_expire.lua through
HoldScripts.sweep), at once again while a pass finds a full batch. A hold is expired from
``expires_at_us`` whether or not it was swept (docs/holds.md): the sweeper only releases
the payee's side, records the event and sets the status, so a late sweep costs nothing but
a stricter ceiling for the payee meanwhile.

Outages (service/outages.py) are logged and retried at the next pass; anything else is a
bug and ends the sweeper with it, which stops the writer too (service/cli/main.py).
"""

import asyncio
import contextlib
import logging

from service.outages import is_outage
from service.redis.holds import HoldScripts

log = logging.getLogger("wallet.hold_sweeper")


async def sweep_expired_holds(holds: HoldScripts, limit: int) -> int:
    """One pass: the number of holds marked expired."""
    return await holds.sweep(limit)


async def run_hold_sweeper(
    holds: HoldScripts, interval_s: float, batch: int, stop: asyncio.Event
) -> None:
    """Sweeps until ``stop`` is set."""
    while not stop.is_set():
        try:
            marked = await sweep_expired_holds(holds, batch)
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
