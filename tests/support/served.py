"""The HTTP tests against a real `wallet serve --workers 2` (WALLET_TEST_SERVED=1)."""

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from service.engines.common import free_port

WORKERS = 2
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Served:
    base_url: str
    metrics_url: str


def service_environ() -> dict[str, str]:
    """This environment for a `wallet` command: without the test suite's own WALLET_TEST_*
    switches, which the command would refuse as unknown settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WALLET_TEST_")}


@contextmanager
def wallet_serve(
    redis_url: str,
    database_url: str,
    log_path: Path,
    workers: int = WORKERS,
    **settings: str,
) -> Iterator[Served]:
    """Starts the real CLI (gunicorn, two workers unless told) and stops it gracefully
    afterwards; ``settings`` are given as WALLET_<NAME>."""
    port = free_port()
    metrics_port = free_port()
    env = service_environ() | {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "WALLET_ARGON2_TIME_COST": "1",
        "WALLET_ARGON2_MEMORY_KIB": "1024",
        # The tests sign up hundreds of users from one address.
        "WALLET_SIGN_UP_MAX_PER_ADDRESS": "100000",
        "WALLET_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    env |= {f"WALLET_{name.upper()}": value for name, value in settings.items()}
    wallet = str(Path(sys.executable).parent / "wallet")
    command = [wallet, "serve", "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    with urllib.request.urlopen(f"{base_url}/readyz", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"wallet serve did not start; see {log_path}") from None
                    time.sleep(0.2)
            yield Served(base_url, f"http://127.0.0.1:{metrics_port}")
        finally:
            process.terminate()
            process.wait(timeout=60)


class ServedClient:
    """Speaks like pytest-aiohttp's TestClient for what the tests use: relative paths,
    per-request cookies, ``.session.cookie_jar`` and ``make_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            base_url=base_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )

    def make_url(self, path: str) -> URL:
        return URL(self.base_url + path)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(path, **kwargs)

    async def close(self) -> None:
        await self.session.close()
