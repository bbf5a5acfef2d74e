"""Where one request's CPU goes: a py-spy profile of one worker, cut into parts, priced in
microseconds of CPU per request.

py-spy samples the worker's Python stacks (on-CPU only, ``--nonblocking``); each sample is
given to the part of the deepest frame that belongs to one (PARTS, first match from the
leaf up), so a sample inside aiohttp's response writing called from our error middleware
counts as aiohttp, and one inside redis-py called from our script wrapper as Redis. The CPU
of a request is that of both workers over the round divided by the requests wrk made; each
part gets its share of it. Used by transfer_benchmark.py ``--profile``.
"""

import collections
import os
import re
import resource
import subprocess
from pathlib import Path

# (part, pattern on a frame's file, as py-spy prints it: "function (package/file.py:line)")
PARTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Redis call (redis-py, service/redis)", re.compile(r"\((redis|hiredis|service/redis)/")),
    ("metrics (prometheus_client)", re.compile(r"\((prometheus_client/|service/http/metrics)")),
    ("session (aiohttp_session)", re.compile(r"\((aiohttp_session/|service/auth/sessions)")),
    ("JSON body and validation", re.compile(r"\((json/|pydantic|service/http/(input|schemas))")),
    ("access log, request id", re.compile(r"\((logging/|service/http/logs)")),
    ("response body (orjson, errors)", re.compile(r"\((service/http/errors|orjson)")),
    # service/cli/ holds the worker's run loop (serve_workers): a sample whose deepest
    # frame of ours is there is in the event loop, counted with the rest.
    ("handlers and domain (service/)", re.compile(r"\((service/(?!cli/)|persistence/)")),
    # aiohttp/worker.py is the gunicorn worker's run loop: a sample there is in the event
    # loop itself (uvloop's C code has no Python frame), counted with the rest.
    (
        "aiohttp (parse, dispatch, write)",
        re.compile(r"\((aiohttp/(?!worker\.py)|multidict/|yarl/)"),
    ),
)
REST = "event loop, asyncio and the rest"
_FRAME = re.compile(r"[^;]+ \([^;]+\)")


def record(pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    """Starts py-spy on ``pid`` for ``seconds``; wait for it after the load."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def part_of(stack: str) -> str:
    for frame in reversed(_FRAME.findall(stack)):
        for part, pattern in PARTS:
            if pattern.search(frame):
                return part
    return REST


def shares(raw: Path) -> dict[str, float]:
    """Each part's share of the samples in py-spy's raw output (collapsed stacks)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[part_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {part: counts[part] / total for part in [*(p for p, _ in PARTS), REST]}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (those that have exited count 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def load_client_cpu_seconds() -> float:
    """CPU of this process's children that have been waited for (each wrk run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_machine(columns: dict[str, dict[str, float]]) -> None:
    """A table: µs of CPU per request by process group, one column per server."""
    names = list(columns)
    groups = list(next(iter(columns.values())))
    print("| process | " + " | ".join(f"{n} µs/request" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for group in groups:
        print(f"| {group} | " + " | ".join(f"{columns[n][group]:.0f}" for n in names) + " |")
    totals = [f"{sum(columns[n].values()):.0f}" for n in names]
    print("| total | " + " | ".join(totals) + " |")


def print_parts(columns: dict[str, tuple[dict[str, float], float]]) -> None:
    """A table: µs of CPU per request by part, one column per server (shares, µs/request)."""
    names = list(columns)
    print("| part | " + " | ".join(f"{n} µs/request" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for part in [*(p for p, _ in PARTS), REST]:
        cells = [
            f"{s[part] * per_request:.0f} ({s[part]:.0%})" for s, per_request in columns.values()
        ]
        print(f"| {part} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(f"{v[1]:.0f}" for v in columns.values()) + " |")
