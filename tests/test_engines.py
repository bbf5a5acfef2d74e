"""service.engines against the real servers of the wheels: data kept across stop and start,
a directory refused while its owner lives, and what follows a SIGKILL of the owner."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis import Redis

from service.engines.common import (
    HOST,
    Deadline,
    Engine,
    EngineInUseError,
    engine_processes,
    free_port,
    parent_of,
    pid_alive,
)
from service.engines.postgres import PostgresEngine, RunningPostgres, start_postgres
from service.engines.valkey import RunningValkey, ValkeyEngine, start_valkey
from tests.support.servers import scratch_dir

REPO = Path(__file__).resolve().parent.parent
CHILD_START_TIMEOUT_S = 60.0
SERVER_END_TIMEOUT_S = 30.0
#: Short: a leftover that is stopped (SIGSTOP) cannot act on its graceful signal anyway.
LEFTOVER_STOP_TIMEOUT_S = 0.5

# The owner that gets killed: starts both servers on argv[1], reports them, waits.
OWNER = """
import json, sys, time
from pathlib import Path
from service.engines.postgres import start_postgres
from service.engines.valkey import start_valkey
valkey, postgres = start_valkey(Path(sys.argv[1])), start_postgres(Path(sys.argv[1]))
report = {"valkey": [valkey.url, valkey.pid], "postgres": [postgres.dsn, postgres.pid]}
print(json.dumps(report), flush=True)
time.sleep(600)
"""


class Owner:
    """A child python process that owns the servers on a directory."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(data_dir)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the owner exited with {self.process.wait(CHILD_START_TIMEOUT_S)}"
        report: dict[str, list[Any]] = json.loads(line)
        self.redis_url, self.valkey_pid = report["valkey"]
        self.postgres_dsn, self.postgres_pid = report["postgres"]

    def kill(self) -> None:
        self.process.kill()  # SIGKILL
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def server_processes(data_dir: Path) -> list[int]:
    """Every valkey-server and postgres process working on `data_dir`."""
    return engine_processes(data_dir / "valkey", "valkey-server") + engine_processes(
        data_dir / "postgres", "postgres"
    )


def run_leftover(engine: Engine) -> "subprocess.Popen[bytes]":
    """The engine's server on its directory as nobody's: tied to no owner, holding no lock,
    in a session of its own (like one that was not told that its owner died)."""
    engine.prepare(Deadline(CHILD_START_TIMEOUT_S))
    port, account = free_port(), engine.account
    process = subprocess.Popen(
        engine.command(port),
        cwd=engine.data,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )
    deadline = Deadline(CHILD_START_TIMEOUT_S)
    while not engine.ready(process, port):
        assert not deadline.expired(), f"{engine.program} did not start"
        time.sleep(0.01)
    return process


def all_ended(pids: list[int], timeout_s: float) -> bool:
    deadline = Deadline(timeout_s)
    while any(pid_alive(pid) for pid in pids):
        if deadline.expired():
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh directory, not under data_dir: each pytest session start (any concurrent run
    included) sets /tmp/pytest-of-USER back to 0700, which as root locks the server's user
    out of a cluster there."""
    with scratch_dir("engines") as path:
        yield path
        for pid in server_processes(path):  # what a failed test left
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    """Owners started by a test; any still alive at its end are killed."""
    started: list[Owner] = []
    yield started
    for owner in started:
        if owner.process.poll() is None:
            owner.kill()


@pytest.fixture
def running() -> Iterator[list[RunningValkey | RunningPostgres]]:
    """Servers started by a test; any still running at its end are stopped."""
    started: list[RunningValkey | RunningPostgres] = []
    yield started
    for server in started:
        server.stop()


def valkey_get(url: str, key: str) -> bytes | None:
    with Redis.from_url(url) as client:
        value = client.get(key)
    assert value is None or isinstance(value, bytes)
    return value


def valkey_set(url: str, key: str, value: str) -> None:
    with Redis.from_url(url) as client:
        assert client.set(key, value)


async def _postgres(dsn: str, statement: str) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await connection.fetch(statement)]
    finally:
        await connection.close()


def postgres_run(dsn: str, statement: str) -> list[Any]:
    return asyncio.run(_postgres(dsn, statement))


def write_both(redis_url: str, postgres_dsn: str, value: str) -> None:
    """A key set with appendfsync always, and a committed row: both acknowledged."""
    valkey_set(redis_url, "engines:test", value)
    postgres_run(postgres_dsn, "CREATE TABLE IF NOT EXISTS kept (value text)")
    postgres_run(postgres_dsn, f"INSERT INTO kept VALUES ('{value}')")


def assert_kept(valkey: RunningValkey, postgres: RunningPostgres, value: str) -> None:
    assert valkey_get(valkey.url, "engines:test") == value.encode()
    assert (value,) in postgres_run(postgres.dsn, "SELECT value FROM kept")


def assert_port_free(port: int) -> None:
    """Nobody listens on `port`, and a server could bind it again (with SO_REUSEADDR, as
    both servers do, since the closed connections' TIME_WAIT may linger)."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=1.0).close()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))


def test_data_survives_stop_and_start(data_dir: Path) -> None:
    valkey, postgres = start_valkey(data_dir), start_postgres(data_dir)
    assert valkey.url == f"redis://127.0.0.1:{valkey.port}/0"
    assert postgres.url == f"postgresql+asyncpg://postgres@127.0.0.1:{postgres.port}/wallet"
    write_both(valkey.url, postgres.dsn, "first")
    # Owned by this process now: a second start here is refused too.
    with pytest.raises(EngineInUseError):
        start_valkey(data_dir)
    with pytest.raises(EngineInUseError):
        start_postgres(data_dir)
    valkey.stop()
    postgres.stop()
    valkey.stop()  # twice does nothing
    assert not pid_alive(valkey.pid)
    assert not pid_alive(postgres.pid)
    assert not server_processes(data_dir)
    assert_port_free(valkey.port)
    assert_port_free(postgres.port)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    with start_valkey(data_dir) as valkey, start_postgres(data_dir) as postgres:
        assert_kept(valkey, postgres, "first")
    assert_port_free(valkey.port)
    assert_port_free(postgres.port)


def test_a_first_start_and_the_next_leave_no_error_in_the_postgres_log(data_dir: Path) -> None:
    """The `wallet` database is looked up in the catalog, not by connecting to it: a first
    start is no error (it was a FATAL "database does not exist" in the server's log)."""
    for _ in range(2):
        with start_postgres(data_dir) as postgres:
            assert postgres_run(postgres.dsn, "SELECT current_database()") == [("wallet",)]
    log = (data_dir / "postgres.log").read_text()
    assert "database system is ready to accept connections" in log
    problems = [line for line in log.splitlines() if "ERROR:" in line or "FATAL:" in line]
    assert problems == []


def test_servers_belong_to_their_owner_and_end_when_it_is_killed(
    data_dir: Path, owners: list[Owner], running: list[RunningValkey | RunningPostgres]
) -> None:
    """While the owner lives, nobody else may take or stop its servers; SIGKILL of the owner
    ends them by themselves, and the next start finds the acknowledged data."""
    owners.append(owner := Owner(data_dir))
    with pytest.raises(EngineInUseError):
        start_valkey(data_dir)
    with pytest.raises(EngineInUseError):
        start_postgres(data_dir)
    servers = server_processes(data_dir)
    assert {owner.valkey_pid, owner.postgres_pid} <= set(servers)
    write_both(owner.redis_url, owner.postgres_dsn, "acknowledged")

    owner.kill()
    # Nobody stops them: the kernel tells them that their parent died.
    assert all_ended(servers, SERVER_END_TIMEOUT_S), f"still running: {server_processes(data_dir)}"

    running.append(valkey := start_valkey(data_dir))
    running.append(postgres := start_postgres(data_dir))
    assert_kept(valkey, postgres, "acknowledged")


def test_a_leftover_server_is_stopped_by_the_next_start(
    data_dir: Path, running: list[RunningValkey | RunningPostgres]
) -> None:
    """Servers still running on the directory, owned by nobody, are ended by the next start
    (one deaf to its graceful signal too), which runs its own on the same data."""
    with start_valkey(data_dir) as valkey, start_postgres(data_dir) as postgres:
        write_both(valkey.url, postgres.dsn, "kept")
    leftovers = [run_leftover(ValkeyEngine(data_dir)), run_leftover(PostgresEngine(data_dir))]
    os.kill(leftovers[0].pid, signal.SIGSTOP)

    running.append(valkey := start_valkey(data_dir, stop_timeout_s=LEFTOVER_STOP_TIMEOUT_S))
    running.append(postgres := start_postgres(data_dir, stop_timeout_s=LEFTOVER_STOP_TIMEOUT_S))
    assert [leftover.poll() for leftover in leftovers] == [-signal.SIGKILL, 0]
    # Only the new servers (and their children) run on the directory.
    assert engine_processes(data_dir / "valkey", "valkey-server") == [valkey.pid]
    postgres_now = engine_processes(data_dir / "postgres", "postgres")
    assert all(postgres.pid in (pid, parent_of(pid)) for pid in postgres_now)
    assert_kept(valkey, postgres, "kept")


def test_a_server_that_cannot_bind_its_port_is_reported(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match="Address already in use"):
            start_valkey(data_dir, port=port, start_timeout_s=10.0)
    assert not server_processes(data_dir)
    with start_valkey(data_dir):  # the failed start gave the directory up
        pass


def test_stop_escalates_to_sigkill_after_the_bound(data_dir: Path) -> None:
    """A server that ignores its graceful stop is killed once stop_timeout_s has passed."""
    valkey = start_valkey(data_dir, stop_timeout_s=0.2)
    os.kill(valkey.pid, signal.SIGSTOP)  # deaf to SIGTERM, not to SIGKILL
    valkey.stop()
    assert not pid_alive(valkey.pid)
    assert_port_free(valkey.port)
