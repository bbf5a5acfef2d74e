"""A soak: `wallet serve --workers 2` and `wallet writer` under `wallet loadtest` (the whole
mix, Idempotency-Keys on) for --seconds, with the resident memory of every process sampled
every --every seconds. Prints RSS over time and the change from the first sample after
warm-up to the last, then the load test's own verdict (every invariant of the money).

    PYTHONPATH=. python benchmarks/soak.py --seconds 600 --every 30
"""

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.transfer_benchmark import BIN, children, own_databases, process, rss_mib, wait_ready

PORT, METRICS_PORT, WRITER_METRICS_PORT = 8094, 8096, 8098


def sample_rss(
    pids: dict[str, int], every_s: float, stop: threading.Event
) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []

    def run() -> None:
        while not stop.wait(every_s):
            samples.append({name: round(rss_mib(pid), 1) for name, pid in pids.items()})

    threading.Thread(target=run, daemon=True).start()
    return samples


def soak(args: argparse.Namespace, env: dict[str, str], logs: Path) -> int:
    subprocess.run([BIN / "wallet", "migrate"], env=env, check=True, capture_output=True)
    serve = [str(BIN / "wallet"), "serve", "--port", str(PORT), "--workers", "2"]
    with (
        process(serve, env, logs / "serve.log") as api,
        process([str(BIN / "wallet"), "writer"], env, logs / "writer.log") as writer,
    ):
        wait_ready(f"http://127.0.0.1:{PORT}/readyz")
        workers = children(api.pid)
        pids = {f"API worker {i + 1}": pid for i, pid in enumerate(workers)}
        pids |= {"API master": api.pid, "writer": writer.pid}
        stop = threading.Event()
        samples = sample_rss(pids, args.every, stop)
        loadtest = [str(BIN / "wallet"), "loadtest", "--url", f"http://127.0.0.1:{PORT}"]
        loadtest += ["--users", "50", "--concurrency", "64", "--duration", str(args.seconds)]
        loadtest += ["--idempotency-keys"]
        verdict = subprocess.run(loadtest, env=env, capture_output=True, text=True)
        stop.set()
    print("| sample | " + " | ".join(pids) + " |")
    print("|---|" + "---|" * len(pids))
    for i, sample in enumerate(samples):
        at_s = (i + 1) * args.every
        print(f"| {at_s:.0f} s | " + " | ".join(f"{sample[n]:.1f}" for n in pids) + " |")
    if len(samples) >= 3:
        first, last = samples[1], samples[-1]  # the first sample is before the users exist
        for name in pids:
            change = 100 * (last[name] - first[name]) / first[name]
            print(f"{name}: {first[name]:.1f} -> {last[name]:.1f} MiB ({change:+.1f} %)")
    print(verdict.stdout[-3000:])
    print(verdict.stderr[-2000:], file=sys.stderr)
    return verdict.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--every", type=float, default=30)
    parser.add_argument("--admin-dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    with own_databases(args.admin_dsn, args.redis, "soak") as (env, logs):
        env["WALLET_METRICS_LISTEN"] = f"127.0.0.1:{METRICS_PORT}"
        env["WALLET_WRITER_METRICS_LISTEN"] = f"127.0.0.1:{WRITER_METRICS_PORT}"
        # Every user signs up from the one address of the load client.
        env["WALLET_SIGN_UP_MAX_PER_ADDRESS"] = "100000"
        started = time.monotonic()
        code = soak(args, env, logs)
        print(f"soak of {time.monotonic() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
