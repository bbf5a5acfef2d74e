"""service.engines against the real servers of the wheels: data kept across stop and start,
and what a start finds after the previous owner was killed with SIGKILL."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis import Redis

from service.engines.common import HOST, Deadline, EngineInUseError, pid_alive
from service.engines.postgres import RunningPostgres, start_postgres
from service.engines.valkey import RunningValkey, start_valkey

REPO = Path(__file__).resolve().parent.parent
CHILD_START_TIMEOUT_S = 60.0
SERVER_END_TIMEOUT_S = 30.0

# The owner that gets killed: starts both servers on argv[1], reports them, waits.
OWNER = """
import json, sys, time
from pathlib import Path
from service.engines.postgres import start_postgres
from service.engines.valkey import start_valkey
data_dir, die_with_parent = Path(sys.argv[1]), sys.argv[2] == "1"
valkey = start_valkey(data_dir, die_with_parent=die_with_parent)
postgres = start_postgres(data_dir, die_with_parent=die_with_parent)
report = {"valkey": [valkey.url, valkey.pid], "postgres": [postgres.dsn, postgres.pid]}
print(json.dumps(report), flush=True)
time.sleep(600)
"""


class Owner:
    """A child python process that owns the servers on a directory."""

    def __init__(self, data_dir: Path, *, die_with_parent: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(data_dir), "1" if die_with_parent else "0"],
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

    def end_servers(self) -> None:
        """Wait for the owner's servers to end, ending them if they do not by themselves."""
        for pid, sig in ((self.valkey_pid, signal.SIGTERM), (self.postgres_pid, signal.SIGINT)):
            deadline = Deadline(SERVER_END_TIMEOUT_S)
            while pid_alive(pid) and not deadline.expired():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                time.sleep(0.01)
            assert not pid_alive(pid), f"server pid {pid} of a killed owner still runs"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh directory, not under data_dir: each pytest session start (any concurrent run
    included) sets /tmp/pytest-of-USER back to 0700, which as root locks the server's user
    out of a cluster there."""
    path = Path(tempfile.mkdtemp(prefix="wallet-engines-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    """Owners started by a test; any still alive at its end are killed."""
    started: list[Owner] = []
    yield started
    for owner in started:
        if owner.process.poll() is None:
            owner.kill()
        owner.end_servers()


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
    valkey.stop()
    postgres.stop()
    valkey.stop()  # twice does nothing
    assert not pid_alive(valkey.pid)
    assert not pid_alive(postgres.pid)
    assert_port_free(valkey.port)
    assert_port_free(postgres.port)
    assert not (data_dir / "valkey.pid").exists()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    with start_valkey(data_dir) as valkey, start_postgres(data_dir) as postgres:
        assert not valkey.reused
        assert not postgres.reused
        assert_kept(valkey, postgres, "first")
    assert_port_free(valkey.port)
    assert_port_free(postgres.port)


def test_servers_belong_to_their_owner_until_it_is_killed(
    data_dir: Path, owners: list[Owner], running: list[RunningValkey | RunningPostgres]
) -> None:
    """die_with_parent (the default): while the owner lives, nobody else may take or stop its
    servers; SIGKILL of the owner ends them cleanly, and the next start finds the
    acknowledged data and runs servers of its own."""
    owner = Owner(data_dir, die_with_parent=True)
    owners.append(owner)
    with pytest.raises(EngineInUseError):
        start_valkey(data_dir, start_timeout_s=5.0)
    with pytest.raises(EngineInUseError):
        start_postgres(data_dir, start_timeout_s=5.0)
    assert pid_alive(owner.valkey_pid)
    assert pid_alive(owner.postgres_pid)
    write_both(owner.redis_url, owner.postgres_dsn, "acknowledged")
    owner.kill()

    running.append(valkey := start_valkey(data_dir))
    running.append(postgres := start_postgres(data_dir))
    assert not valkey.reused
    assert not postgres.reused
    assert not pid_alive(owner.valkey_pid)
    assert not pid_alive(owner.postgres_pid)
    assert_kept(valkey, postgres, "acknowledged")


def test_leftover_of_killed_owner_is_reused_or_replaced(
    data_dir: Path,
    owners: list[Owner],
    running: list[RunningValkey | RunningPostgres],
) -> None:
    """die_with_parent=False: the servers outlive a killed owner. A start that also does
    not tie them to itself takes them over; one that does replaces them."""
    first = Owner(data_dir, die_with_parent=False)
    owners.append(first)
    write_both(first.redis_url, first.postgres_dsn, "before the first kill")
    first.kill()
    assert pid_alive(first.valkey_pid)
    assert pid_alive(first.postgres_pid)

    valkey = start_valkey(data_dir, die_with_parent=False)
    postgres = start_postgres(data_dir, die_with_parent=False)
    assert (valkey.reused, valkey.pid) == (True, first.valkey_pid)
    assert (postgres.reused, postgres.pid) == (True, first.postgres_pid)
    assert_kept(valkey, postgres, "before the first kill")
    valkey.stop()
    postgres.stop()
    assert not pid_alive(first.valkey_pid)
    assert not pid_alive(first.postgres_pid)
    assert_port_free(valkey.port)
    assert_port_free(postgres.port)

    second = Owner(data_dir, die_with_parent=False)
    owners.append(second)
    write_both(second.redis_url, second.postgres_dsn, "before the second kill")
    second.kill()
    running.append(valkey := start_valkey(data_dir))
    running.append(postgres := start_postgres(data_dir))
    assert not valkey.reused
    assert not postgres.reused
    assert not pid_alive(second.valkey_pid)
    assert not pid_alive(second.postgres_pid)
    assert_kept(valkey, postgres, "before the second kill")


def test_a_server_that_cannot_bind_its_port_is_reported(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match="Address already in use"):
            start_valkey(data_dir, port=port, start_timeout_s=10.0)
    assert not any(pid_alive(int(p)) for p in _pids_in(data_dir / "valkey.pid"))


def _pids_in(pidfile: Path) -> list[str]:
    return pidfile.read_text().split() if pidfile.exists() else []


def test_stop_escalates_to_sigkill_after_the_bound(data_dir: Path) -> None:
    """A server that ignores its graceful stop is killed once stop_timeout_s has passed."""
    valkey = start_valkey(data_dir, stop_timeout_s=0.2)
    os.kill(valkey.pid, signal.SIGSTOP)  # deaf to SHUTDOWN and SIGTERM, not to SIGKILL
    valkey.stop()
    assert not pid_alive(valkey.pid)
    assert_port_free(valkey.port)
