"""Side by side in one run: (a) the bare design, (a2) the project's Redis client and money
scripts without the HTTP features, (b) the real transfer endpoint, (c) the writer's lag
during (b) and its drain capacity.

(a)  benchmarks/bare_app.py: aiohttp + uvloop + redis-py's default client + a transfer
     script of the same shape; none of the project's code. The ceiling.
(a2) benchmarks/ceiling_app.py: the project's Redis client and `MoneyScripts.transfer`
     behind a bare endpoint: what the project's money path costs before any HTTP feature.
(b)  `wallet serve --workers 2`: sessions, strict validation, an Idempotency-Key on half
     the requests, metrics, with `wallet writer` running.
All under gunicorn with 2 uvloop workers; load from `wrk -t1 -c64` on the same machine;
rounds alternate a, a2, b, a, a2, b, ... and the medians are reported.

    PYTHONPATH=. python benchmarks/transfer_benchmark.py --rounds 5 --seconds 10 [--profile]

With ``--profile``, one more round of each server with py-spy on one of its workers prints
the CPU of one request in microseconds per part (benchmarks/request_profile.py). With
``--before DIR``, (b0) joins the rounds: `wallet serve` of another checkout, installed in
DIR/.venv (an earlier commit, to measure a change side by side), on the same servers.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import request_profile
from tests.support.postgres_admin import postgres_admin
from tests.support.redis_claim import claimed_redis_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONNECTIONS = 64
# Not one of the commonly used passwords, which sign-up refuses.
PASSWORD = "correct-horse-battery"
A_PORT, A2_PORT, B_PORT, B0_PORT = 8093, 8090, 8091, 8089
# B's GET /metrics listener (WALLET_METRICS_LISTEN): never on the API's port.
B_METRICS_PORT = 8092
B0_METRICS_PORT = 8088
WRITER_METRICS_PORT = 8097
Process = subprocess.Popen[bytes]
Result = tuple[float, float, float]  # requests/s, p50 ms, p99 ms

A_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"from_user_id":1,"to_user_id":2,"amount":1}'
wrk.headers["Content-Type"] = "application/json"
"""
# Half of the requests carry a fresh Idempotency-Key.
B_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local headers = {["Content-Type"] = "application/json", ["Cookie"] = "wallet_session=%s"}
  if n %% 2 == 0 then headers["Idempotency-Key"] = "%s-" .. n end
  return wrk.format("POST", nil, headers, '{"to_user_id":2,"amount":1}')
end
"""


def http(method: str, url: str, body: object = None, cookie: str = "") -> str:
    """Sends a JSON request; returns the Set-Cookie header."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if cookie:
        request.add_header("Cookie", f"wallet_session={cookie}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers.get("Set-Cookie", ""))


def funded_payer(base: str) -> str:
    """Signs up alice (the payer) and bob, and funds alice with 200 deposits of 10^12
    kopecks; her session cookie."""
    for user in ("alice", "bob"):
        http("POST", f"{base}/api/sign-up/", {"username": user, "password": PASSWORD})
    set_cookie = http("POST", f"{base}/api/login/", {"username": "alice", "password": PASSWORD})
    cookie = set_cookie.split("wallet_session=", 1)[1].split(";", 1)[0]
    for _ in range(200):
        http("POST", f"{base}/api/balance/deposit/", {"amount": 10**12}, cookie)
    return cookie


def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rss_of(servers: dict[str, Process], writer: Process) -> dict[str, list[float]]:
    """Resident memory of each worker of every server, and of the writer, in MiB."""
    rss = {side: [round(rss_mib(p), 1) for p in children(s.pid)] for side, s in servers.items()}
    return rss | {"writer": [round(rss_mib(writer.pid), 1)]}


def gunicorn(app: str, port: int) -> list[str]:
    return [
        *(str(BIN / "gunicorn"), app),
        *("--worker-class", "aiohttp.GunicornUVLoopWebWorker"),
        *("--workers", "2", "--bind", f"127.0.0.1:{port}"),
    ]


def wrk(url: str, script: str, seconds: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", lua.name]
        out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"requests failed during the run:\n{out}")

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"no {pattern!r} in wrk's output:\n{out}")
        value, unit = match.group(1), match.group(2) if match.lastindex == 2 else ""
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "": 1.0}[unit]

    return (
        number(r"Requests/sec:\s+([\d.]+)"),
        number(r"50%\s+([\d.]+)(us|ms|s)"),
        number(r"99%\s+([\d.]+)(us|ms|s)"),
    )


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def unpersisted(base: str) -> float:
    return metric(base, "wallet_writer_lag_entries") + metric(base, "wallet_writer_pending_entries")


DROP_BARE_STREAM = (
    "import os, redis; redis.Redis.from_url(os.environ['REDIS_URL']).delete('bare:stream')"
)


class LagSampler(threading.Thread):
    """Samples the writer's lag from /metrics every 100 ms while ``active`` (during (b))."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.samples: list[float] = []
        self.running = True
        self.active = False
        self.start()

    def run(self) -> None:
        while self.running:
            if self.active:
                self.samples.append(metric(self.base, "wallet_writer_lag_seconds"))
            time.sleep(0.1)


def measure(args: argparse.Namespace, env: dict[str, str], logs: Path) -> None:
    subprocess.run([BIN / "wallet", "migrate"], env=env, check=True, capture_output=True)
    b_base = f"http://127.0.0.1:{B_PORT}"
    b_metrics = f"http://127.0.0.1:{B_METRICS_PORT}"
    b_url = f"{b_base}/api/balance/transfer/"
    urls = {
        "a": f"http://127.0.0.1:{A_PORT}/transfer",
        "a2": f"http://127.0.0.1:{A2_PORT}/transfer",
        "b": b_url,
    }
    b_cmd = [str(BIN / "wallet"), "serve", "--port", str(B_PORT), "--workers", "2"]
    writer_cmd = [str(BIN / "wallet"), "writer"]
    with contextlib.ExitStack() as stack:
        servers = {
            "a": stack.enter_context(
                process(gunicorn("benchmarks.bare_app:create", A_PORT), env, logs / "a.log")
            ),
            "a2": stack.enter_context(
                process(gunicorn("benchmarks.ceiling_app:create", A2_PORT), env, logs / "a2.log")
            ),
        }
        if args.before is not None:
            urls["b0"] = f"http://127.0.0.1:{B0_PORT}/api/balance/transfer/"
            b0_cmd = [str(args.before / ".venv/bin/wallet"), "serve", "--port", str(B0_PORT)]
            # Its own installed code, not this checkout's on PYTHONPATH; and only settings it
            # knows (it refuses the others).
            b0_env = {
                k: v
                for k, v in env.items()
                if k not in ("PYTHONPATH", "WALLET_WRITER_METRICS_LISTEN")
            }
            b0_env["WALLET_METRICS_LISTEN"] = f"127.0.0.1:{B0_METRICS_PORT}"
            servers["b0"] = stack.enter_context(
                process([*b0_cmd, "--workers", "2"], b0_env, logs / "b0.log")
            )
        servers["b"] = stack.enter_context(process(b_cmd, env, logs / "b.log"))
        sides = list(servers)
        wait_ready(f"{b_base}/readyz")
        if args.before is not None:
            wait_ready(f"http://127.0.0.1:{B0_PORT}/readyz")
        cookie = funded_payer(b_base)
        scripts = {"a": A_SCRIPT, "a2": A_SCRIPT, "b": B_SCRIPT % (cookie, uuid.uuid4().hex[:12])}
        scripts["b0"] = B_SCRIPT % (cookie, uuid.uuid4().hex[:12])
        with process(writer_cmd, env, logs / "writer.log") as writer:
            for side in sides:  # warm-up
                wrk(urls[side], scripts[side], 3)
            rss_start = rss_of(servers, writer)
            results: dict[str, list[Result]] = {side: [] for side in sides}
            sampler = LagSampler(b_metrics)
            for round_ in range(args.rounds):
                for side in sides:
                    sampler.active = side == "b"
                    results[side].append(wrk(urls[side], scripts[side], args.seconds))
                    sampler.active = False
                    if side == "a":  # the bare design's stream is not drained by anyone
                        subprocess.run(
                            [BIN / "python", "-c", DROP_BARE_STREAM], env=env, check=True
                        )
                rates = ", ".join(f"{side} {results[side][-1][0]:.0f}/s" for side in sides)
                print(f"round {round_ + 1}: {rates}", flush=True)
            sampler.running = False
            rss_end = rss_of(servers, writer)
            if args.profile:
                profile(servers, writer, urls, scripts, args.seconds, logs)
            # (c) drain capacity: the writer paused (SIGSTOP) while a backlog builds up,
            # then resumed, so no process start-up is in the figure.
            writer.send_signal(signal.SIGSTOP)
            wrk(b_url, scripts["b"], args.seconds)
            backlog = unpersisted(b_metrics)
            started = time.monotonic()
            writer.send_signal(signal.SIGCONT)
            while unpersisted(b_metrics):
                time.sleep(0.02)
            drain_rate = backlog / (time.monotonic() - started)
    report(results, sampler.samples, drain_rate, backlog, rss_start, rss_end)


def profile(
    servers: dict[str, Process],
    writer: Process,
    urls: dict[str, str],
    scripts: dict[str, str],
    seconds: int,
    logs: Path,
) -> None:
    """One more round of each server with py-spy on its first worker; prints µs per part,
    and the CPU of one request on the whole machine by process (other work left out)."""
    columns = {}
    machine = {}
    for side, server in servers.items():
        groups = {
            "API workers": children(server.pid),
            "Redis": request_profile.pids_named("redis-server")
            + request_profile.pids_named("valkey-server"),
            "writer": [writer.pid],
            "PostgreSQL": request_profile.pids_named("postgres"),
        }
        raw = logs / f"profile-{side}.txt"
        spy = request_profile.record(groups["API workers"][0], seconds, raw)
        before = {name: request_profile.cpu_seconds(pids) for name, pids in groups.items()}
        client_before = request_profile.load_client_cpu_seconds()
        rate, _, _ = wrk(urls[side], scripts[side], seconds)
        requests = rate * seconds
        machine[side] = {
            name: 1e6 * (request_profile.cpu_seconds(pids) - before[name]) / requests
            for name, pids in groups.items()
        }
        client_cpu = request_profile.load_client_cpu_seconds() - client_before
        machine[side]["load client (wrk)"] = 1e6 * client_cpu / requests
        spy.wait(timeout=60)
        columns[side] = (request_profile.shares(raw), machine[side]["API workers"])
    print()
    request_profile.print_parts(columns)
    print(f"(py-spy raw stacks: {logs}/profile-*.txt)")
    print()
    request_profile.print_machine(machine)


def report(
    results: dict[str, list[Result]],
    lag_samples: list[float],
    drain_rate: float,
    backlog: float,
    rss_start: dict[str, list[float]],
    rss_end: dict[str, list[float]],
) -> None:
    def median(side: str, i: int) -> float:
        return statistics.median(r[i] for r in results[side])

    lag = sorted(lag_samples)
    lag_p99_ms = 1000 * lag[int(0.99 * (len(lag) - 1))] if lag else float("nan")
    names = {
        "a": "(a) bare design",
        "a2": "(a2) project client, no HTTP features",
        "b": "(b) wallet serve",
        "b0": "(b0) wallet serve of --before",
    }
    print()
    print("| | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for side in results:
        rate, p50, p99 = median(side, 0), median(side, 1), median(side, 2)
        print(f"| {names[side]} | {rate:.0f} | {p50:.1f} | {p99:.1f} |")
    print()
    pairs = [("b", "a"), ("a2", "a"), ("b", "a2")] + [("b", "b0")] * ("b0" in results)
    for top, bottom in pairs:
        rate = median(top, 0) / median(bottom, 0)
        p99 = median(top, 2) / median(bottom, 2)
        print(f"{top}/{bottom}: throughput {rate:.2f}, p99 {p99:.2f}")
    b_rate = median("b", 0)
    print(f"writer drain capacity: {drain_rate:.0f} rows/s from a backlog of {backlog:.0f}")
    print(f"drain capacity / (b) rate: {drain_rate / b_rate:.1f}")
    print(f"writer lag during (b): p99 {lag_p99_ms:.0f} ms over {len(lag)} samples")
    for side in (*results, "writer"):
        print(f"RSS {side}: start {rss_start[side]} MiB, end {rss_end[side]} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="py-spy: µs per request by part")
    parser.add_argument("--before", type=Path, help="a checkout with .venv: its serve as (b0)")
    parser.add_argument("--admin-dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    with own_databases(args.admin_dsn, args.redis, "bench") as (env, logs):
        env["WALLET_METRICS_LISTEN"] = f"127.0.0.1:{B_METRICS_PORT}"
        env["WALLET_WRITER_METRICS_LISTEN"] = f"127.0.0.1:{WRITER_METRICS_PORT}"
        measure(args, env, logs)


@contextlib.contextmanager
def own_databases(admin_dsn: str, redis: str, prefix: str) -> Iterator[tuple[dict[str, str], Path]]:
    """A PostgreSQL database and a Redis database of the run's own (dropped, released at
    the end), and the environment that names them; a directory for the processes' logs."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    server = admin_dsn.rsplit("/", 1)[0].removeprefix("postgresql://")
    asyncio.run(postgres_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    logs = Path(tempfile.mkdtemp(prefix=f"wallet-{prefix}-"))
    try:
        with claimed_redis_database(redis) as redis_url:
            yield (
                os.environ
                | {
                    "REDIS_URL": redis_url,
                    "DATABASE_URL": f"postgresql+asyncpg://{server}/{name}",
                    "PYTHONPATH": str(ROOT),
                },
                logs,
            )
    finally:
        asyncio.run(postgres_admin(admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))
        print(f"logs: {logs}")


if __name__ == "__main__":
    main()
