"""`wallet serve --workers N`: N processes on one port under gunicorn's aiohttp worker.

gunicorn forks the workers, restarts one that dies, and on SIGTERM stops accepting and
lets in-flight requests finish (graceful_timeout) before the pools are closed.
"""

from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication

from service.http.app import create_app
from service.settings import Settings

GRACEFUL_TIMEOUT_S = 30


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "aiohttp.GunicornUVLoopWebWorker",
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "reuse_port": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        # gunicorn 27 opens a control socket at one fixed path per user: a second service
        # on the host would take it over from the first.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)

    def load(self) -> web.Application:
        # Runs in each worker after the fork: every worker opens its own pools.
        return create_app(self._settings)


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    _Server(settings, host, port, workers).run()
