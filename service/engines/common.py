"""What both engines share: starting a server on a data directory, and its lifetime.

An engine (valkey.py, postgres.py) says only what is its own: its program and command line,
how to prepare its directory, when it is ready, and the signals that stop it. start_server()
does the rest, on DIR/NAME (NAME is "valkey" or "postgres"):

Ownership. The process that starts a server holds an flock on DIR/NAME.owner.lock until
stop(); the kernel releases it when that process dies, even by SIGKILL. A start that cannot
take it raises EngineInUseError at once: a live process owns the directory (another start in
this very process included). A start that takes it knows that any server still on the
directory is a leftover of a dead owner.

Leftovers. They are found through /proc (Linux): a process of the engine's program whose
working directory is DIR/NAME (both servers run there). Each server among them gets the
engine's stop signals in turn (the graceful one first, stop_timeout_s to act on it), then
whatever is left of them (their children) gets SIGKILL. Leftovers are never taken over.

Never two servers on one directory. The server inherits an flock on DIR/NAME.server.lock and,
with its children, holds it until the last of them has ended. A start takes that lock before
it runs a server, waiting for it no longer than its start_timeout_s: a leftover that /proc
did not show (one still exiting, or any leftover where there is no /proc) makes the start
wait for it, or fail, never run a second server.

Ending with the owner. The server is started with PR_SET_PDEATHSIG (Linux) set to its
graceful stop signal: when the thread that started it ends, even by SIGKILL of the whole
process, the kernel sends it that signal and it shuts down cleanly, so no server runs on
for ever. Start from the main thread (or one that outlives the server). The server gets its
own process group, so a terminal's Ctrl-C reaches the owner only, which then stops it.
"""

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

log = logging.getLogger("wallet.engines")

HOST = "127.0.0.1"
#: After the graceful bound (stop_timeout_s) each harder signal gets this long to act.
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.01
LOG_TAIL_BYTES = 4000
#: free_port() cannot reserve the port: another program may take it first; then a new one.
PORT_ATTEMPTS = 3
PR_SET_PDEATHSIG = 1


class EngineError(RuntimeError):
    """A server could not be started or stopped."""


class EngineInUseError(EngineError):
    """A live process owns the data directory's server."""


class PortInUseError(EngineError):
    """The server could not listen on its port: another process has it."""


class Deadline:
    """One time budget shared by every step of a start."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining_s(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end


@dataclass(frozen=True)
class Account:
    """The user and group a server runs as when not as this process (PostgreSQL as root)."""

    uid: int
    gid: int


class Engine(ABC):
    """One kind of server on one data directory: what start_server() cannot know."""

    #: Names DIR/NAME (the server's data), DIR/NAME.log and the locks DIR/NAME.*.lock.
    name: str
    #: The server's executable name, as /proc shows it.
    program: str
    #: Sent in turn until the server ends; the first is the graceful one, also sent by the
    #: kernel when the owner dies.
    stop_signals: tuple[signal.Signals, ...]

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve()  # /proc shows working directories resolved
        self.data = self.root / self.name
        self.log = self.root / f"{self.name}.log"
        self.owner_lock = self.root / f"{self.name}.owner.lock"
        self.server_lock = self.root / f"{self.name}.server.lock"
        #: Who runs the server; None: the user of this process. Set by prepare().
        self.account: Account | None = None

    @abstractmethod
    def prepare(self, deadline: Deadline) -> None:
        """Make self.data ready for a server. No server runs on it now."""

    @abstractmethod
    def command(self, port: int) -> list[str]:
        """The server's command line, listening on HOST:`port`."""

    @abstractmethod
    def ready(self, process: "subprocess.Popen[bytes]", port: int) -> bool:
        """Does `process` answer on `port`? Raises PortInUseError if another server does."""

    @abstractmethod
    def finish(self, port: int, deadline: Deadline) -> None:
        """What to do once the server is ready, before it is handed out."""

    @abstractmethod
    def url(self, port: int) -> str:
        """How clients reach the server."""


class RunningServer:
    """A server this process started. stop() ends it; so does leaving a `with`."""

    def __init__(
        self,
        engine: Engine,
        process: "subprocess.Popen[bytes]",
        port: int,
        owner_lock_fd: int,
        stop_timeout_s: float,
    ) -> None:
        self.name = engine.name
        self.url = engine.url(port)
        self.port = port
        self.pid = process.pid
        self.data_dir = engine.root
        self.stop_timeout_s = stop_timeout_s
        self._process = process
        self._owner_lock_fd = owner_lock_fd
        self._stop_signals = engine.stop_signals
        self._stopped = False

    def stop(self) -> None:
        """End the server: its graceful signal, stop_timeout_s to act on it, then the harder
        ones (KILL_WAIT_S each); then give up the directory. Doing it twice does nothing."""
        if self._stopped:
            return
        process = self._process
        end_processes(
            [self.pid], lambda _: process.poll() is None, self._stop_signals, self.stop_timeout_s
        )
        os.close(self._owner_lock_fd)
        self._stopped = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<{self.name} pid={self.pid} {self.url} {state}>"


Handle = TypeVar("Handle", bound=RunningServer)


def start_server(
    engine: Engine,
    handle: type[Handle],
    port: int | None,
    start_timeout_s: float,
    stop_timeout_s: float,
) -> Handle:
    """Own `engine`'s directory, stop its leftovers, prepare it and run the server on `port`
    (None: a free one); return once it is ready. start_timeout_s bounds it all but the
    stopping of leftovers (stop_timeout_s for the graceful signal, then KILL_WAIT_S each)."""
    deadline = Deadline(start_timeout_s)
    make_dir(engine.root)
    owner_lock_fd = try_lock(engine.owner_lock)
    if owner_lock_fd is None:
        raise EngineInUseError(f"{engine.data} is in use: a live process holds {engine.owner_lock}")
    try:
        stop_leftovers(engine, stop_timeout_s)
        server_lock_fd = wait_lock(engine.server_lock, deadline)
        try:
            engine.prepare(deadline)
            process, port = _spawn_on_a_port(engine, server_lock_fd, port, deadline, stop_timeout_s)
        finally:
            os.close(server_lock_fd)  # the server holds it now
    except BaseException:
        os.close(owner_lock_fd)
        raise
    log.info("%s pid %d on port %d for %s", engine.program, process.pid, port, engine.data)
    return handle(engine, process, port, owner_lock_fd, stop_timeout_s)


def _spawn_on_a_port(
    engine: Engine, server_lock_fd: int, port: int | None, deadline: Deadline, stop_timeout_s: float
) -> "tuple[subprocess.Popen[bytes], int]":
    attempts = 1 if port is not None else PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port()
        try:
            return _spawn(engine, server_lock_fd, chosen, deadline, stop_timeout_s), chosen
        except PortInUseError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _spawn(
    engine: Engine, server_lock_fd: int, port: int, deadline: Deadline, stop_timeout_s: float
) -> "subprocess.Popen[bytes]":
    log_offset = file_size(engine.log)
    account = engine.account
    with engine.log.open("ab") as log_file:
        process = subprocess.Popen(
            engine.command(port),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=engine.data,
            pass_fds=(server_lock_fd,),
            process_group=0,
            preexec_fn=parent_death_preexec(engine.stop_signals[0]),
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,  # else it keeps this process's groups
        )
    try:
        while not engine.ready(process, port):
            if process.poll() is not None:
                logged = log_tail(engine.log, log_offset)
                error = PortInUseError if "Address already in use" in logged else EngineError
                raise error(f"{engine.program} exited with {process.returncode}:\n{logged}")
            if deadline.expired():
                raise EngineError(
                    f"{engine.program} was not ready within {deadline.seconds} s:\n"
                    + log_tail(engine.log, log_offset)
                )
            time.sleep(POLL_INTERVAL_S)
        engine.finish(port, deadline)
    except BaseException:
        end_processes(
            [process.pid], lambda _: process.poll() is None, engine.stop_signals, stop_timeout_s
        )
        raise
    return process


# --- processes -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; the name in field 2 may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        fields = _stat_fields(pid)
        return fields is not None and fields[0] not in ("Z", "X", "x")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def _readlink(path: str) -> Path | None:
    try:
        return Path(os.readlink(path).removesuffix(" (deleted)"))
    except OSError:
        return None


def is_engine_process(pid: int, directory: Path, program: str) -> bool:
    """Is `pid` a live `program` working in `directory` (so: that server on that data)?"""
    exe = _readlink(f"/proc/{pid}/exe")
    return (
        exe is not None
        and exe.name == program
        and _readlink(f"/proc/{pid}/cwd") == directory
        and pid_alive(pid)
    )


def engine_processes(directory: Path, program: str) -> list[int]:
    """Every live `program` process working in `directory`: a server and its children."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    pids = (int(name) for name in entries if name.isdigit())
    return sorted(pid for pid in pids if is_engine_process(pid, directory, program))


def parent_death_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive `sig` when this thread dies (Linux only).

    It runs in the child after Popen's user/group switch, which would otherwise clear the
    setting; if the parent died before prctl took effect, the child gives up instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            raise OSError("the parent died before the server started")

    return preexec


def end_processes(
    pids: Sequence[int],
    alive: Callable[[int], bool],
    signals: Sequence[signal.Signals],
    first_wait_s: float,
) -> None:
    """Send `signals` in turn to those of `pids` still `alive`, until none is: the first
    signal gets first_wait_s to act, each other KILL_WAIT_S. `alive` also guards a pid that
    is not our child against reuse (and reaps one that is, through Popen.poll)."""
    for index, sig in enumerate(signals):
        running = [pid for pid in pids if alive(pid)]
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if _all_ended(running, alive, first_wait_s if index == 0 else KILL_WAIT_S):
            return
    raise EngineError(f"pids {list(pids)} still run after {', '.join(s.name for s in signals)}")


def _all_ended(pids: Sequence[int], alive: Callable[[int], bool], timeout_s: float) -> bool:
    deadline = Deadline(timeout_s)
    while any(alive(pid) for pid in pids):
        if deadline.expired():
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def stop_leftovers(engine: Engine, stop_timeout_s: float) -> None:
    """Stop what a dead owner left running on engine.data (see the module docstring)."""

    def alive(pid: int) -> bool:
        return is_engine_process(pid, engine.data, engine.program)

    pids = engine_processes(engine.data, engine.program)
    if not pids:
        return
    log.warning("%s %s left running on %s: stopping them", engine.program, pids, engine.data)
    # Only the servers, not their children: the server orders its own shutdown.
    servers = [pid for pid in pids if parent_of(pid) not in pids]
    end_processes(servers, alive, engine.stop_signals, stop_timeout_s)
    # Children the servers left, e.g. PostgreSQL backends of a postmaster that was killed.
    strays = engine_processes(engine.data, engine.program)
    end_processes(strays, alive, [signal.SIGKILL], KILL_WAIT_S)


# --- ports, files, locks ---------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now (a server may still race us to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, offset: int) -> str:
    """What was logged to `path` after `offset`, at most the last LOG_TAIL_BYTES."""
    try:
        with path.open("rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fsync_dir(directory: Path) -> None:
    """Make the entries just created or renamed in `directory` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(directory: Path) -> None:
    """Create `directory` (and its parents) durably, if it does not exist yet."""
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when someone else holds it.

    The fd is not inherited by programs this process runs (O_CLOEXEC) unless passed on."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def wait_lock(path: Path, deadline: Deadline) -> int:
    """An fd holding an exclusive flock on `path`, waiting for it no longer than `deadline`."""
    while (fd := try_lock(path)) is None:
        if deadline.expired():
            raise EngineError(
                f"{path} stayed locked for {deadline.seconds} s: a server left by a dead owner,"
                " not found through /proc, still runs on the directory"
            )
        time.sleep(POLL_INTERVAL_S)
    return fd
