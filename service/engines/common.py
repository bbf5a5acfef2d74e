"""What both engines share: errors, deadlines, locks, the owner record, processes, stopping.

Processes are identified through /proc (Linux): a process belongs to a data directory when
its working directory is that directory (both servers chdir into their data directory) and
its program has the engine's name. Elsewhere /proc is missing, nothing is identified, and a
leftover server makes the start fail instead of being reused or stopped.
"""

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

log = logging.getLogger("wallet.engines")

#: After the graceful bound (stop_timeout_s) each harder signal gets this long to act.
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.01
LOG_TAIL_BYTES = 4000
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


class EngineError(RuntimeError):
    """A server could not be started, identified or stopped."""


class EngineInUseError(EngineError):
    """The data directory's server belongs to a process that is still alive."""


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


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): tells a reused pid apart."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def _readlink(path: str) -> Path | None:
    try:
        return Path(os.readlink(path).removesuffix(" (deleted)"))
    except OSError:
        return None


def cwd_of(pid: int) -> Path | None:
    return _readlink(f"/proc/{pid}/cwd")


def exe_of(pid: int) -> Path | None:
    return _readlink(f"/proc/{pid}/exe")


def is_engine_process(pid: int, directory: Path, program: str) -> bool:
    """Is `pid` a live `program` working in `directory` (so: that server on that data)?"""
    exe = exe_of(pid)
    return exe is not None and exe.name == program and cwd_of(pid) == directory and pid_alive(pid)


def engine_processes(directory: Path, program: str) -> list[int]:
    """Every live `program` process working in `directory`: a server and its children."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    pids = (int(name) for name in entries if name.isdigit())
    return sorted(pid for pid in pids if is_engine_process(pid, directory, program))


def main_process(pids: Sequence[int], hint: int | None) -> int | None:
    """The server among `pids`: `hint` (its pidfile) if listed, else the one without a parent
    among them."""
    if hint is not None and hint in pids:
        return hint
    roots = [pid for pid in pids if parent_of(pid) not in pids]
    return roots[0] if roots else None


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


def wait_exit(pid: int, timeout_s: float, process: "subprocess.Popen[bytes] | None") -> bool:
    """Wait up to timeout_s for `pid` to end (reaping it when it is our child)."""
    if process is not None:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = Deadline(timeout_s)
    while pid_alive(pid):
        if deadline.expired():
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def stop_process(
    pid: int,
    signals: Sequence[signal.Signals],
    stop_timeout_s: float,
    process: "subprocess.Popen[bytes] | None",
    still_ours: Callable[[], bool],
    ask: Callable[[], bool] | None = None,
) -> None:
    """Send `signals` in turn until `pid` ends: the first gets stop_timeout_s, the others
    KILL_WAIT_S each. `still_ours` guards a pid that is not our child against reuse. `ask`,
    if given, is tried instead of the first signal (e.g. a SHUTDOWN command); it returns
    False when it could not ask, and then the first signal is sent after all."""
    for index, sig in enumerate(signals):
        if process is not None and process.poll() is not None:
            return
        if process is None and not still_ours():
            return
        try:
            if index > 0 or ask is None or not ask():
                os.kill(pid, sig)
        except ProcessLookupError:
            wait_exit(pid, KILL_WAIT_S, process)
            return
        if wait_exit(pid, stop_timeout_s if index == 0 else KILL_WAIT_S, process):
            return
    raise EngineError(f"pid {pid} still runs after {', '.join(s.name for s in signals)}")


def stop_strays(pids: Sequence[int], directory: Path, program: str) -> None:
    """SIGKILL what is left of a server on `directory` (children orphaned by its end)."""
    for pid in pids:
        if is_engine_process(pid, directory, program):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = Deadline(KILL_WAIT_S)
    while any(is_engine_process(pid, directory, program) for pid in pids):
        if deadline.expired():
            raise EngineError(f"{program} processes {list(pids)} on {directory} do not end")
        time.sleep(POLL_INTERVAL_S)


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
    """An fd holding an exclusive flock on `path`, or None when someone else holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def wait_lock(path: Path, deadline: Deadline, what: str) -> int:
    """An fd holding an exclusive flock on `path`, waiting for it no longer than `deadline`."""
    while (fd := try_lock(path)) is None:
        if deadline.expired():
            raise EngineError(f"{what}: {path} stayed locked for {deadline.seconds} s")
        time.sleep(POLL_INTERVAL_S)
    return fd


@contextlib.contextmanager
def held_lock(path: Path, deadline: Deadline, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting for it no longer than `deadline`."""
    fd = wait_lock(path, deadline, what)
    try:
        yield
    finally:
        os.close(fd)


# --- the owner record ------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerRecord:
    """Who started (or took over) the server on a data directory, and how.

    Written once the server answers, removed by stop(); a record left behind by a killed
    owner tells the next start whether that owner is really gone and whether its server was
    tied to it (and so is ending by itself).
    """

    owner_pid: int
    owner_start_ticks: int | None
    server_pid: int
    port: int
    die_with_parent: bool

    @classmethod
    def mine(cls, server_pid: int, port: int, die_with_parent: bool) -> "OwnerRecord":
        pid = os.getpid()
        return cls(pid, start_ticks(pid), server_pid, port, die_with_parent)

    def owner_alive(self) -> bool:
        if not pid_alive(self.owner_pid):
            return False
        return self.owner_start_ticks is None or start_ticks(self.owner_pid) == (
            self.owner_start_ticks
        )

    @classmethod
    def read(cls, path: Path) -> "OwnerRecord | None":
        try:
            raw = json.loads(path.read_text())
            return cls(
                owner_pid=int(raw["owner_pid"]),
                owner_start_ticks=(
                    None if raw["owner_start_ticks"] is None else int(raw["owner_start_ticks"])
                ),
                server_pid=int(raw["server_pid"]),
                port=int(raw["port"]),
                die_with_parent=bool(raw["die_with_parent"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w") as file:
            json.dump(asdict(self), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def remove(self, path: Path) -> None:
        """Remove the record if it is still this one (a later owner's stays)."""
        if OwnerRecord.read(path) == self:
            path.unlink(missing_ok=True)


def refuse_live_owner(record: OwnerRecord | None, server_pid: int, what: str) -> None:
    """A server whose owner still runs is not ours to reuse or stop."""
    if record is not None and record.server_pid == server_pid and record.owner_alive():
        whose = "this process" if record.owner_pid == os.getpid() else f"pid {record.owner_pid}"
        raise EngineInUseError(f"{what} (pid {server_pid}) is already run by {whose}")


# --- the handle ------------------------------------------------------------------------------


class RunningServer:
    """A server this process started or took over. stop() ends it; so does leaving a `with`."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        port: int,
        pid: int,
        data_dir: Path,
        reused: bool,
        process: "subprocess.Popen[bytes] | None",
        record: OwnerRecord,
        record_path: Path,
        stop_signals: Sequence[signal.Signals],
        stop_timeout_s: float,
        identify: Callable[[int], bool],
        ask_to_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.port = port
        self.pid = pid
        self.data_dir = data_dir
        #: True when a server left running by a previous owner was taken over.
        self.reused = reused
        self.stop_timeout_s = stop_timeout_s
        self._process = process
        self._record = record
        self._record_path = record_path
        self._stop_signals = tuple(stop_signals)
        self._identify = identify
        self._ask_to_stop = ask_to_stop
        self._stopped = False

    def stop(self, stop_timeout_s: float | None = None) -> None:
        """End the server: its graceful signal, stop_timeout_s to act on it, then harder ones
        (KILL_WAIT_S each). Doing it twice does nothing."""
        if self._stopped:
            return
        stop_process(
            self.pid,
            self._stop_signals,
            self.stop_timeout_s if stop_timeout_s is None else stop_timeout_s,
            self._process,
            lambda: self._identify(self.pid),
            self._ask_to_stop,
        )
        self._record.remove(self._record_path)
        self._stopped = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<{self.name} pid={self.pid} {self.url} {state}>"
