"""A money script whose reply is lost: for the tests of what the API does then."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from service.redis.pipelining import Arg, ReplyLost
from service.redis.scripts import LuaScript
from service.settings import Settings
from tests.support.faults.procs import DelayProxy


class LosesTheReply:
    """A money script that runs first (``runs``) or not at all (its command is still on its
    way), then fails as a reply lost after sending does."""

    def __init__(self, script: LuaScript, runs: bool = True) -> None:
        self.script = script
        self.runs = runs
        self.sent: list[tuple[list[str], list[Arg]]] = []

    async def __call__(
        self, keys: list[str], args: list[Arg], wait_for_replicas: bool = False
    ) -> Any:
        """``wait_for_replicas`` is not honoured: the reply, and the replicas' word after
        it, are what is lost."""
        self.sent.append((keys, args))
        if self.runs:
            await self.script(keys=keys, args=args)
        raise ReplyLost("EVALSHA sent, no reply: TimeoutError('Timeout reading')")

    async def arrives_late(self) -> Any:
        """The command that was on its way reaches Redis after all: its raw reply."""
        keys, args = self.sent[-1]
        return await self.script(keys=keys, args=args)


@asynccontextmanager
async def through_a_proxy(
    settings: Settings, redis_url: str
) -> AsyncIterator[tuple[DelayProxy, Settings]]:
    """A DelayProxy in front of the run's Redis, and ``settings`` that reach Redis through
    it, with a socket timeout of 300 ms: a reply the proxy drops is lost quickly."""
    shared = urlsplit(redis_url)
    async with DelayProxy(shared.port or 6379) as proxy:
        yield (
            proxy,
            settings.model_copy(
                update={
                    "redis_url": f"redis://127.0.0.1:{proxy.port}{shared.path}",
                    "redis_socket_timeout_ms": 300,
                }
            ),
        )
