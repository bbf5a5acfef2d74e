"""Redis with replicas and Sentinel (``redis+sentinel://``): connections to whichever server
the Sentinels name the primary now.

redis-py's SentinelConnectionPool asks the Sentinels where the primary is whenever one of
its connections opens, and closes its idle connections when the answer changed; here it
is also the blocking pool of connect_redis, with the auto-pipeline, whose connections
(``new_pipeline_connection``) open the same way. So after a failover every new connection
goes to the new primary, with no restart, and the scripts are loaded there again when it
answers NOSCRIPT (service/redis/scripts.py).

A connection does not stay with a server the Sentinels no longer name: before it carries a
command, at most once every ``PRIMARY_CHECK_INTERVAL_S``, it asks them where the primary
is, and opens again to the new one if it moved. A primary demoted by a failover keeps
taking writes until the Sentinels reconfigure it (up to 10 s later, when they next poll
it), and those writes are lost then: this bounds the time a client keeps sending it any.
(With WALLET_REDIS_MIN_REPLICAS ≥ 1 none of them is acknowledged anyway: the demoted
primary has no replica left to confirm them.)

Each connection, as it opens, makes sure of two things before it carries a command:

- the server is a primary (INFO replication): a Sentinel that has not heard of a failover
  yet may still name the old primary, demoted since. Refused, it is an outage in which
  nothing was sent (503 with Retry-After).
- the transaction id counter belongs to this primary's replication history
  (lua/follow_primary.lua): a promoted replica may lack the last transactions of the old
  primary, and its counter may be behind ids those were given. The counter is then set
  aside, and money refused, until the writer starts it again in a new epoch of ids
  (service/ledger/id_counter.py). No id is ever issued twice, whatever a failover lost.

A command that a server refuses with READONLY (it was demoted while the connection was
open) did not run: it is raised as it is (ReadOnlyError, an outage), and the connection
reconnects before its next command. redis-py's own SentinelManagedConnection turns it into
a dropped connection instead, which would make every call of a pipelined batch look as if
it may have run.
"""

import asyncio
import logging
from typing import Any

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError

from service.redis.counter_history import follow_primary
from service.redis.pools import CheckedConnection, PipeliningPool
from service.settings import SentinelUrl

log = logging.getLogger("wallet.redis")

# How long a Sentinel gets to answer where the primary is, before the next one is asked
# (with no retry: redis-py's default retries a Sentinel that is down for seconds): a
# Sentinel answers from memory, in well under a millisecond.
SENTINEL_TIMEOUT_S = 1.0
# How often a connection in use asks the Sentinels whether its server is still the primary.
PRIMARY_CHECK_INTERVAL_S = 1.0


class PrimaryConnection(CheckedConnection):
    """A connection to the primary the Sentinels name (see the module's docstring)."""

    def __init__(self, *, connection_pool: SentinelConnectionPool, **kwargs: Any) -> None:
        self._sentinel_pool = connection_pool
        self._next_primary_check = 0.0
        super().__init__(**kwargs)

    async def connect(self) -> None:
        if not self.is_connected:
            await self.open()

    async def open(self) -> None:
        self.host, self.port = await self._primary()
        await self.connect_check_health(check_health=False, retry_socket_connect=False)

    async def _primary(self) -> tuple[str, int]:
        """Where the Sentinels say the primary is (the pool closes its idle connections
        when that changed); raises MasterNotFoundError when none can tell."""
        self._next_primary_check = asyncio.get_running_loop().time() + PRIMARY_CHECK_INTERVAL_S
        address: tuple[str, int] = await self._sentinel_pool.get_master_address()  # type: ignore[no-untyped-call]
        return address

    async def check_health(self) -> None:
        """Besides the PING of an idle connection: whether its server is still the primary
        (module docstring). Nothing of the next command was sent yet."""
        if self.is_connected and asyncio.get_running_loop().time() >= self._next_primary_check:
            try:
                primary = await self._primary()
            except MasterNotFoundError:  # the Sentinels cannot tell: stay with this server
                primary = (self.host, self.port)
            if primary != (self.host, self.port):
                log.warning("the primary moved to %s:%d; reconnecting", *primary)
                await self.disconnect()
                await self.open()
        await super().check_health()

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health)
        await follow_primary(self, cluster=False)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (redis-py's signature)
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            return await super().read_response(
                disable_decoding=disable_decoding,
                timeout=timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except ReadOnlyError:
            # The server was demoted: the command did not run. The pool (or the pipeline)
            # closes the connection after it, and the next one asks the Sentinels again.
            self.mark_for_reconnect()  # type: ignore[no-untyped-call]
            raise


class SentinelPool(SentinelConnectionPool, PipeliningPool):
    """redis-py's Sentinel pool, blocking and pipelining like connect_redis's other pool;
    closing it closes its clients of the Sentinels too."""

    sentinel_manager: Sentinel

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


def open_sentinel_pool(url: SentinelUrl, **pool_options: Any) -> SentinelPool:
    """The pool of the primary of ``url``'s deployment; connections open on first use."""
    sentinel_options = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinels = Sentinel(list(url.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return SentinelPool(  # type: ignore[no-untyped-call]
        url.service_name,
        sentinels,
        is_master=True,
        connection_class=PrimaryConnection,
        db=url.db,
        **pool_options,
    )
