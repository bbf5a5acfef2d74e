"""Serving the API and /metrics on sockets bound by the caller, with a bound on the
connections a process holds open.

One way for every mode: the gunicorn workers (service/cli/multiworker.py), the embedded mode
(service/cli/embedded.py) and the tests serve through ``serving``.

Why a limit of our own: aiohttp accepts every connection (its maintainers leave limits to
the application), its gunicorn worker ignores gunicorn's ``worker_connections``, and asyncio
offers no way to stop accepting for a while. So each connection is accepted and counted; one
past the limit is answered 503 and closed before aiohttp sees it.
"""

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import orjson
from aiohttp import web

from service.domain import refusals
from service.domain.refusals import RETRY_SHORTLY_S
from service.http.metrics import create_metrics_app
from service.http.state import REDIS


def _busy_response() -> bytes:
    """The whole answer to a connection past the limit, in the contract's error shape."""
    refusal = refusals.TOO_MANY_CONNECTIONS
    body = orjson.dumps({"error": {"code": refusal.code, "message": refusal.message}})
    head = (
        f"HTTP/1.1 {refusal.status} Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_SHORTLY_S}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_BUSY = _busy_response()


class ConnectionLimit:
    """The open connections of one process, across its listeners."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open = 0

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """For loop.create_server: aiohttp's protocol for each connection, counted."""
        return lambda: _Counted(server(), self)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it is open; or, past the limit,
    a 503 and a close, aiohttp never told of it."""

    def __init__(self, inner: web.RequestHandler, limit: ConnectionLimit) -> None:
        self._inner = inner
        self._limit = limit
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Counted here, not in the factory: asyncio pairs every connection_made with one
        # connection_lost, so the count cannot drift.
        if self._limit.open >= self._limit.max_connections:
            cast(asyncio.Transport, transport).write(_BUSY)
            transport.close()
            return
        self._admitted = True
        self._limit.open += 1
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._limit.open -= 1
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> None:
        # None, as aiohttp's protocol answers: the transport closes itself.
        if self._admitted:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class _LimitedSite(web.BaseSite):
    """aiohttp's SockSite with the connection limit in front of the app's protocol."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limit: ConnectionLimit):
        super().__init__(runner)
        self._sock = sock
        self._limit = limit
        self._app_server = runner.server

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()  # registered with the runner, which stops it on cleanup
        assert self._app_server is not None, "the runner is set up before its sites"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._limit.protocol_factory(self._app_server), sock=self._sock, backlog=self._backlog
        )


@asynccontextmanager
async def serving(
    app: web.Application,
    api_sockets: list[socket.socket],
    metrics_socket: socket.socket,
    max_connections: int,
    shutdown_timeout_s: float,
) -> AsyncIterator[None]:
    """Serves ``app`` on ``api_sockets`` (at most ``max_connections`` open at once) and
    GET /metrics on ``metrics_socket``. On the way out: stops accepting, lets requests in
    flight finish for up to ``shutdown_timeout_s``, then runs the app's cleanup."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    # The metrics app shares the API app's Redis client, which the API app closes: so the
    # metrics listener stops first.
    metrics_runner = web.AppRunner(create_metrics_app(app[REDIS]))
    try:
        await metrics_runner.setup()
        limit = ConnectionLimit(max_connections)
        for sock in api_sockets:
            await _LimitedSite(runner, sock, limit).start()
        await web.SockSite(metrics_runner, metrics_socket).start()
        yield
    finally:
        await metrics_runner.cleanup()
        await runner.cleanup()


async def serve_until_stopped(
    app: web.Application,
    api_socket: socket.socket,
    metrics_socket: socket.socket,
    max_connections: int,
    shutdown_timeout_s: float,
    ready: Callable[[], None],
) -> None:
    """``serving`` in one process until SIGINT or SIGTERM; ``ready`` once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serving(app, [api_socket], metrics_socket, max_connections, shutdown_timeout_s):
        ready()
        await stop.wait()
