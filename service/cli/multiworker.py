"""`wallet serve --workers N`: N processes on one port under gunicorn, with aiohttp's
worker (uvloop) and its run loop replaced by ours.

gunicorn forks the workers, restarts one that dies, and on SIGTERM stops accepting and
lets in-flight requests finish (graceful_timeout) before the pools are closed. A worker that
fails to start stops the master (exit 3) instead of being restarted for ever.

The metrics socket is bound here, once, before the fork: every worker inherits it and may
accept a scrape, and each answers with the registry of all of them (service/http/metrics.py).
"""

import os
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker
from gunicorn.app.base import BaseApplication

from service.http.app import create_app
from service.http.logs import logging_config
from service.http.serving import serving
from service.settings import Settings

GRACEFUL_TIMEOUT_S = 30
# The app's own shutdown ends before gunicorn's graceful timeout kills the worker (the
# share aiohttp's worker uses).
APP_SHUTDOWN_TIMEOUT_S = GRACEFUL_TIMEOUT_S * 0.95


@dataclass(frozen=True)
class _WorkerApp:
    """What a worker serves: made after the fork, so that each opens its own pools."""

    app: web.Application
    metrics_socket: socket.socket
    settings: Settings


class _Worker(GunicornUVLoopWebWorker):
    """aiohttp's worker, serving through ``serving``: the connection limit in front of the
    API, and the metrics listener beside it. aiohttp's own run loop would start plain sites
    on gunicorn's sockets, with neither."""

    async def _run(self) -> None:
        job: _WorkerApp = self.wsgi
        settings = job.settings
        async with serving(
            job.app,
            list(self.sockets),
            job.metrics_socket,
            settings.max_connections,
            APP_SHUTDOWN_TIMEOUT_S,
        ):
            self.booted = True  # tells the master this worker started (see the docstring)
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("parent changed, shutting down: %s", self)
                    break
                await self._wait_next_notify()


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        workers: int,
        metrics_socket: socket.socket,
    ) -> None:
        self._settings = settings
        self._metrics_socket = metrics_socket
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": _Worker,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "reuse_port": True,
            # gunicorn's own lines (master and workers) in the service's JSON.
            "logconfig_dict": logging_config(settings.log_level),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        # gunicorn 27 opens a control socket at one fixed path per user: a second service
        # on the host would take it over from the first.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)

    def load(self) -> _WorkerApp:
        # Runs in each worker after the fork: every worker opens its own pools.
        return _WorkerApp(create_app(self._settings), self._metrics_socket, self._settings)


def serve_workers(
    settings: Settings, host: str, port: int, workers: int, metrics_socket: socket.socket
) -> None:
    _Server(settings, host, port, workers, metrics_socket).run()
