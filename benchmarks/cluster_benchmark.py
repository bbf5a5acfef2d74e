"""A transfer on one Redis against the same on a three-primary Valkey Cluster, side by side in
one run: what the cluster client's routing costs per operation (docs/scaling.md, "Figures").

(s)  `wallet serve --workers 2` + `wallet writer` on a claimed database of the machine's
     Redis (--redis);
(v)  the same on a standalone Valkey of the wheel the cluster runs (so that (c) against (v)
     is the cluster alone, not Redis 7 against Valkey 9);
(c)  the same on a Valkey Cluster of three primaries, no replicas (tests/support/cluster.py);
(cN) with ``--replicas``: three primaries with a replica each and WALLET_REDIS_MIN_REPLICAS=1;
(c3) with ``--buckets``: (c) with WALLET_BUCKETS=3, each bucket's slot on its own primary:
     the payer (user 1) is in bucket 1, the payee (user 2) in bucket 2, so every transfer
     crosses shards (expect, reserve, credit, settle).

The primaries run without an append-only file, as the machine's Redis does; (cN)'s replicas
keep theirs (appendfsync always: WAITAOF waits for it). With one bucket every money key is in
the slot of ``{b0}``, on one primary; the "money primary" of (c3) is the payer's, ``{b1}``'s.
Load as in benchmarks/transfer_benchmark.py (its (b)):
``wrk -t1 -c64`` POST /api/balance/transfer/, half with an Idempotency-Key; rounds
alternate s, v, c, cN, s, ...; medians are reported, and each ratio is the median of the
per-round ratios. Around every wrk run the primaries' INFO is read: EVALSHA calls and their
time (commandstats), WAIT/WAITAOF calls, and the server's socket reads (total_reads_processed),
per 201 (the writer's commands included; on (s) also anyone else's on that server).

    PYTHONPATH=. python benchmarks/cluster_benchmark.py --rounds 3 --seconds 8 \
        [--replicas] [--buckets]
"""

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.transfer_benchmark import (
    B_SCRIPT,
    BIN,
    Result,
    funded_payer,
    own_databases,
    process,
    wait_ready,
    wrk,
)
from service.engines.common import free_port
from tests.support.cluster import ClusterDeployment, cluster_deployment, node_client
from tests.support.faults.procs import Processes
from tests.support.postgres_admin import postgres_admin

NAMES = {
    "s": "(s) one Redis 7.0 (machine's)",
    "v": "(v) one Valkey 9.1",
    "c": "(c) cluster, 3 primaries",
    "cN": "(cN) cluster + replicas, MIN_REPLICAS=1",
    "c3": "(c3) cluster, 3 buckets: every transfer across shards",
}


@dataclass
class Side:
    name: str
    env: dict[str, str]
    primaries: list[redis.Redis]
    money: redis.Redis  # the primary holding the payer's bucket
    url: str = ""
    script: str = ""
    results: list[Result] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)


def snapshot(side: Side) -> Counter[str]:
    counts: Counter[str] = Counter()
    for node in side.primaries:
        commands = node.info("commandstats")
        for command in ("evalsha", "wait", "waitaof"):
            counts[command] += commands.get(f"cmdstat_{command}", {}).get("calls", 0)
        counts["reads"] += node.info("stats")["total_reads_processed"]
        if node is side.money:
            evalsha = commands.get("cmdstat_evalsha", {})
            counts["money evalsha"] += evalsha.get("calls", 0)
            counts["money usec"] += evalsha.get("usec", 0)
    return counts


@contextlib.contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    name = f"clbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(postgres_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        server = admin_dsn.rsplit("/", 1)[0].removeprefix("postgresql://")
        yield f"postgresql+asyncpg://{server}/{name}"
    finally:
        asyncio.run(postgres_admin(admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def without_aof(nodes: list[redis.Redis]) -> list[redis.Redis]:
    for node in nodes:
        node.config_set("appendonly", "no")
    return nodes


def money_primary(
    cluster: ClusterDeployment, primaries: list[redis.Redis], tag: str
) -> redis.Redis:
    slot = int(primaries[0].cluster("KEYSLOT", tag))
    return primaries[cluster.primaries.index(cluster.owner(slot))]


def sides(
    stack: contextlib.ExitStack, args: argparse.Namespace, env: dict[str, str], scratch: Path
) -> list[Side]:
    """The Redis deployments, each with a PostgreSQL database of its own."""
    machine = redis.Redis.from_url(env["REDIS_URL"])
    result = [Side("s", env, [machine], machine)]
    processes = Processes(scratch)
    stack.callback(processes.close)
    valkey = processes.redis("standalone")
    valkey.start()
    while not valkey.ready():
        time.sleep(0.05)
    [single] = without_aof([node_client(valkey)])
    result.append(Side("v", env | {"REDIS_URL": valkey.url}, [single], single))
    clusters = [("c", False, 1)]
    clusters += [("cN", True, 1)] if args.replicas else []
    clusters += [("c3", False, 3)] if args.buckets else []
    for name, replicas, buckets in clusters:
        cluster = stack.enter_context(cluster_deployment(scratch / name, replicas=replicas))
        primaries = without_aof([node_client(server) for server in cluster.primaries])
        extra = {"REDIS_URL": cluster.url(), "WALLET_REDIS_MIN_REPLICAS": str(int(replicas)),
                 "WALLET_BUCKETS": str(buckets)}  # fmt: skip
        money = money_primary(cluster, primaries, "{b1}" if buckets > 1 else "{b0}")
        result.append(Side(name, env | extra, primaries, money))
    for side in result[1:]:
        side.env["DATABASE_URL"] = stack.enter_context(postgres_database(args.admin_dsn))
    return result


def start(stack: contextlib.ExitStack, side: Side, logs: Path) -> None:
    """wallet migrate, serve and writer for ``side``; a funded payer and its wrk script."""
    port = free_port()
    side.env |= {
        "WALLET_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "WALLET_WRITER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    wallet = str(BIN / "wallet")
    subprocess.run([wallet, "migrate"], env=side.env, check=True, capture_output=True)
    serve = [wallet, "serve", "--port", str(port), "--workers", "2"]
    stack.enter_context(process(serve, side.env, logs / f"{side.name}-serve.log"))
    stack.enter_context(process([wallet, "writer"], side.env, logs / f"{side.name}-writer.log"))
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz")
    side.url = f"{base}/api/balance/transfer/"
    side.script = B_SCRIPT % (funded_payer(base), uuid.uuid4().hex[:12])


def measure(all_sides: list[Side], rounds: int, seconds: int) -> None:
    for side in all_sides:  # warm-up
        wrk(side.url, side.script, 3)
    for round_ in range(rounds):
        for side in all_sides:
            before = snapshot(side)
            result = wrk(side.url, side.script, seconds)
            side.totals += snapshot(side) - before
            side.totals["requests"] += round(result[0] * seconds)
            side.results.append(result)
        rates = ", ".join(f"{side.name} {side.results[-1][0]:.0f}/s" for side in all_sides)
        print(f"round {round_ + 1}: {rates}", flush=True)


def report(all_sides: list[Side]) -> None:
    base, valkey = all_sides[:2]

    def ratio(side: Side, i: int, base: Side = base) -> float:
        pairs = zip(side.results, base.results, strict=True)
        return statistics.median(r[i] / b[i] for r, b in pairs)

    print()
    print(
        "| | requests/s | p50 ms | p99 ms | req/s ÷ (s) | p99 ÷ (s) | EVALSHA per 201 "
        "| socket reads per 201 | WAIT per 201 | EVALSHA µs (mean, money primary) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for side in all_sides:
        t = side.totals
        medians = [statistics.median(r[i] for r in side.results) for i in range(3)]
        print(
            f"| {NAMES[side.name]} | {medians[0]:.0f} | {medians[1]:.1f} | {medians[2]:.1f} "
            f"| {ratio(side, 0):.2f} | {ratio(side, 2):.2f} "
            f"| {t['evalsha'] / t['requests']:.2f} | {t['reads'] / t['requests']:.2f} "
            f"| {t['wait'] / t['requests']:.2f} | {t['money usec'] / t['money evalsha']:.1f} |"
        )
    for side in all_sides[1:]:
        t = side.totals
        print(
            f"{side.name}: req/s ÷ (v) {ratio(side, 0, valkey):.2f}, "
            f"p99 ÷ (v) {ratio(side, 2, valkey):.2f}; "
            f"EVALSHA on the money primary: {t['money evalsha']} of {t['evalsha']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--replicas", action="store_true", help="add (cN)")
    parser.add_argument("--buckets", action="store_true", help="add (c3)")
    parser.add_argument("--admin-dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wallet-clbench-redis-"))
    try:
        with (
            own_databases(args.admin_dsn, args.redis, "clbench") as (env, logs),
            contextlib.ExitStack() as stack,
        ):
            all_sides = sides(stack, args, env, scratch)
            for side in all_sides:
                start(stack, side, logs)
            measure(all_sides, args.rounds, args.seconds)
        report(all_sides)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
